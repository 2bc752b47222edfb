"""
The proxy's session over an in-memory transport, with the policy API and the
upstream delivery replaced by recorders: for the tests of the client dialogue
that need no sockets (L{tests.test_session} and the session parts of the
limits, drain, login, bare-LF and operator-log tests).
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ITCPTransport, ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpproxy import replies
from smtpproxy.answer import Decision
from smtpproxy.config import Limits, Policy, ProxyConfig, Upstream
from smtpproxy.server import ProxyFactory
from tests.support.mail import PLAIN

ALLOW = Decision(reply=None, headers=(("X-Checked", "yes"),), sender=None)
QUEUED = replies.Reply(250, "2.0.0 Ok: queued as ABC")


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """Records C{setTcpNoDelay}, as a TCP transport offers it."""

    no_delay = False

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


@implementer(ITLSTransport)
class TLSStringTransport(TCPStringTransport):
    """A TCP transport that can 'start TLS': it records the call and the moment."""

    tls_started_at = None

    def startTLS(self, context):
        self.tls_started_at = len(self.value())


class RecordingPolicy:
    """Records requests; answers with C{self.answer} (a Decision or Deferred)."""

    def __init__(self):
        self.requests = []
        self.answer = ALLOW
        self.cancelled = 0

    def check(self, request):
        self.requests.append(request)
        if isinstance(self.answer, Decision):
            return succeed(self.answer)
        return self.answer

    def close(self):
        return succeed(None)


class RecordingFactory(ProxyFactory):
    """The real factory with the upstream delivery recorded instead."""

    def __init__(self, config, reactor, policy):
        super().__init__(config, reactor, policy)
        self.deliveries = []
        self.mail_parameters = []
        self.outcome = QUEUED

    def deliver(self, sender, recipients, data, mail_parameters=(), rcpt_parameters=None,
                client=None):
        self.deliveries.append((sender, list(recipients), data.read()))
        self.mail_parameters.append(tuple(p.text for p in mail_parameters))
        return self.outcome if isinstance(self.outcome, Deferred) else succeed(self.outcome)


class SessionTestCase(SynchronousTestCase):
    """
    One L{smtpproxy.session} over a L{TLSStringTransport}, with the policy
    API and the upstream replaced by the recorders above and a
    L{MemoryReactorClock} for its timers.
    """

    limits = Limits()

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.policy = RecordingPolicy()
        self.factory = RecordingFactory(self.config(), self.clock, self.policy)
        self.session = self.factory.buildProtocol(None)
        self.transport = TLSStringTransport()
        self.session.makeConnection(self.transport)
        self.addCleanup(self.session.setTimeout, None)

    def config(self, **changes):
        return ProxyConfig(
            policy=Policy(url="http://127.0.0.1:1/"),
            upstream=Upstream(host="127.0.0.1", port=1),
            tls=object(),
            hostname="proxy.test",
            limits=self.limits,
            **changes,
        )

    def send(self, data):
        """Send C{data}; return the reply lines it produced."""
        self.transport.clear()
        self.session.dataReceived(data)
        return self.transport.value().decode().split("\r\n")[:-1]

    def tls(self):
        self.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.session.handshakeCompleted()
        self.send(b"EHLO client.test\r\n")

    def login(self):
        self.tls()
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN + b"\r\n"),
                         ["235 2.7.0 Authentication successful"])

    def envelope(self, *recipients):
        self.login()
        self.send(b"MAIL FROM:<alice@example.com>\r\n")
        for r in recipients or [b"bob@example.net"]:
            self.send(b"RCPT TO:<" + r + b">\r\n")
