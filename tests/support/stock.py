"""
Twisted's own SMTP server, unchanged, recording the raw bytes it receives:
where a test must see exactly what the proxy's sender put on the wire and
how a stock Twisted server reads it (unlike L{tests.support.upstream},
which is scripted and changes how the final dot is answered).
"""

from twisted.internet import defer
from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class CapturedMessage:
    """Keeps the lines of one message as Twisted's server delivers them."""

    def __init__(self, delivery):
        self.delivery = delivery
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.delivery.messages.append(self.lines)
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class CapturingDelivery:
    """Accepts every sender and recipient; each message's lines land in C{messages}."""

    def __init__(self):
        self.messages = []

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return lambda: CapturedMessage(self)


class RecordingESMTP(smtp.ESMTP):
    """Twisted's server, recording the raw bytes and when it is closed."""

    def connectionMade(self):
        self.received = []
        self.closed = defer.Deferred()
        super().connectionMade()

    def dataReceived(self, data):
        self.received.append(data)
        super().dataReceived(data)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.closed.callback(None)


class StockServerFactory(smtp.SMTPFactory):
    """
    Twisted's SMTP server, unchanged, recording each connection's raw input
    (C{protocols}) and the messages it delivered (C{delivery.messages}).
    """

    protocol = RecordingESMTP
    domain = b"upstream.example"

    def __init__(self):
        super().__init__()
        self.delivery = CapturingDelivery()
        self.protocols = []

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        self.protocols.append(p)
        return p
