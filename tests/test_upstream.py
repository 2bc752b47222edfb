"""
Tests for L{smtpproxy.upstream}: scripted upstream replies in memory, and
Twisted's own SMTP server over loopback for the exact bytes on the wire,
and the recording upstream over loopback with real TLS and AUTH.
"""

import base64
import os
from io import BytesIO

import attrs
from twisted.internet import defer, error, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from smtpproxy.parameters import Offer, parse_mail_parameters
from smtpproxy import replies
from smtpproxy.config import Upstream
from smtpproxy.pool import Pool
from tests.support.certs import make_certificates, server_options, trust_root
from tests.support.mail import MESSAGE
from tests.support.session import TCPStringTransport
from tests.support.stock import StockServerFactory
from tests.support.upstream import start_upstream

UPSTREAM = Upstream(host="upstream.example", port=25, timeout=60, connect_timeout=15)
CHUNK = 16384  # twisted.protocols.basic.FileSender.CHUNK_SIZE


def deliver_once(reactor, config, hostname, *args, **kwargs):
    """One message on a connection of its own, closed after it (no connection kept)."""
    return Pool(reactor, attrs.evolve(config, pool_idle=0), hostname).deliver(*args, **kwargs)


class Conversation:
    """
    One L{upstream.deliver} call on a L{MemoryReactorClock}, with the
    upstream's replies fed by the test and the proxy's output read back.
    """

    def __init__(
        self, sender="", recipients=("rcpt@example.com",), data=b"Subject: hi\r\n\r\n",
        config=UPSTREAM, mail_parameters="",
    ):
        self.reactor = MemoryReactorClock()
        self.results = []
        with capturedLogs() as self.logged:
            deliver_once(
                self.reactor, config, "proxy.example", sender, recipients, BytesIO(data),
                parse_mail_parameters(mail_parameters, Offer(dsn=True, smtputf8=True)),
            ).addCallback(self.results.append)
        self.connects = []
        self.connector = self.reactor.connectors[0]
        self.connector.connect = lambda: self.connects.append(True)
        self.factory = self.reactor.tcpClients[0][2]

    def connect(self):
        self.protocol = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.protocol.makeConnection(self.transport)

    def greeted(self, banner=b"220 upstream.example ESMTP"):
        """Connect and take the upstream's greeting (the proxy answers with EHLO)."""
        self.connect()
        self.reply(banner)

    def reply(self, *lines):
        """Feed upstream reply lines; return what the proxy sent in answer."""
        self.protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
        return self.sent()

    def sent(self):
        value = self.transport.value()
        self.transport.clear()
        return value

    def sendData(self):
        """Run the FileSender (registered on the 354) to its end."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        return self.sent()

    def close(self, reason=error.ConnectionDone):
        """Do what the TCP client does when the connection ends."""
        with capturedLogs() as logged:
            self.protocol.connectionLost(Failure(reason()))
            self.factory.clientConnectionLost(self.connector, Failure(reason()))
        self.logged.extend(logged)

    def toRecipients(self, *rcptReplies):
        """Greeting, EHLO, MAIL and the given RCPT replies; return the last output."""
        self.connect()
        assert self.reply(b"220 upstream.example ESMTP") == b"EHLO proxy.example\r\n"
        assert self.reply(b"250-upstream.example", b"250 HELP") == b"MAIL FROM:<>\r\n"
        sent = self.reply(b"250 2.1.0 Ok")
        for line in rcptReplies:
            sent = self.reply(line)
        return sent

    def toData(self):
        """Everything up to and including the data and its final dot."""
        assert self.toRecipients(b"250 2.1.5 Ok") == b"DATA\r\n"
        assert self.reply(b"354 End data with <CR><LF>.<CR><LF>") == b""
        return self.sendData()

    def finish(self, quitReply=b"221 2.0.0 Bye"):
        """Answer the QUIT and close; return the reply (the Deferred has fired)."""
        self.reply(quitReply)
        assert self.transport.disconnecting
        self.close()
        [reply] = self.results
        return reply

    def warnings(self):
        return [e for e in self.logged if e["log_level"] is LogLevel.warn]


class InMemoryTests(unittest.TestCase):
    """The sender against scripted upstream replies."""

    def assertUnavailable(self, conversation):
        self.assertEqual(conversation.results, [replies.UPSTREAM_UNAVAILABLE])
        self.assertEqual(len(conversation.warnings()), 1)
        self.assertEqual(conversation.warnings()[0]["log_namespace"], "smtpproxy.upstream")
        self.assertEqual(conversation.connects, [])
        self.assertEqual(len(conversation.reactor.tcpClients), 1)

    def test_connectArguments(self):
        c = Conversation()
        host, port, factory, timeout, _ = c.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("upstream.example", 25, 15))
        self.assertEqual((factory.timeout, factory.noisy), (60, False))

    def test_reply_during_the_data(self):
        """A reply before the final dot is no outcome: 451, and no QUIT inside the body."""
        c = Conversation(data=b"Subject: x\r\n\r\n" + b"y" * 100000 + b"\r\n")
        c.connect()
        c.reply(b"220 upstream ESMTP")
        c.reply(b"250 upstream")
        c.reply(b"250 2.1.0 Ok")
        c.reply(b"250 2.1.5 Ok")
        c.reply(b"354 go ahead")
        c.transport.producer.resumeProducing()
        sent = c.reply(b"250 2.0.0 queued early")
        self.assertNotIn(b"QUIT", sent)
        self.assertTrue(c.transport.disconnecting)
        c.close()
        self.assertEqual(c.results, [replies.UPSTREAM_UNAVAILABLE])

    def test_no_nagle(self):
        """The final dot must not wait for the upstream's delayed ACK (about 40 ms)."""
        c = Conversation()
        c.connect()
        self.assertTrue(c.transport.no_delay)

    def test_success(self):
        """
        The data goes byte for byte, then C{.}; the queue id is relayed as
        soon as the upstream answered the dot, before the QUIT is answered.
        """
        data = b"..\r\nRSET\r\nSubject: x\r\n\r\n..dot\r\n.\tnot end\r\nlast\r\n"
        c = Conversation(data=data)
        self.assertEqual(c.toData(), data + b".\r\n")
        self.assertEqual(c.reply(b"250 2.0.0 Ok: queued as ABC"), b"QUIT\r\n")
        self.assertEqual(c.results, [replies.Reply(250, "2.0.0 Ok: queued as ABC")])
        self.assertEqual(c.finish(), replies.Reply(250, "2.0.0 Ok: queued as ABC"))
        self.assertEqual(c.warnings(), [])

    def test_successTextWithoutEnhancedCode(self):
        c = Conversation()
        c.toData()
        c.reply(b"250 queued as ABC")
        self.assertEqual(c.finish(), replies.Reply(250, "2.0.0 queued as ABC"))

    def test_emptyData(self):
        c = Conversation(data=b"")
        self.assertEqual(c.toData(), b".\r\n")

    def test_addressesAsGiven(self):
        """Null sender, domain literal, quoted local part: written unchanged."""
        c = Conversation(
            sender="user@[192.0.2.1]", recipients=['"john doe"@example.com', "Postmaster"]
        )
        c.greeted()
        self.assertEqual(c.reply(b"250 upstream.example"), b"MAIL FROM:<user@[192.0.2.1]>\r\n")
        self.assertEqual(c.reply(b"250 Ok"), b'RCPT TO:<"john doe"@example.com>\r\n')
        self.assertEqual(c.reply(b"250 Ok"), b"RCPT TO:<Postmaster>\r\n")

    def test_heloFallback(self):
        c = Conversation()
        c.greeted(b"220 upstream.example SMTP")
        self.assertEqual(c.reply(b"502 5.5.2 Command not recognized"), b"HELO proxy.example\r\n")
        self.assertEqual(c.reply(b"250 upstream.example"), b"MAIL FROM:<>\r\n")

    def mailFromAnswering(self, ehloReply):
        """The MAIL FROM sent for an 8-bit message after C{ehloReply}'s last line."""
        c = Conversation(sender="a@b.example", mail_parameters="BODY=8BITMIME")
        c.greeted()
        return c.reply(b"250-upstream.example", ehloReply)

    def test_body_parameter(self):
        """The client's BODY= goes along with MAIL FROM (RFC 6152)."""
        self.assertEqual(self.mailFromAnswering(b"250 8BITMIME"),
                         b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n")

    def test_body_parameter_only_where_offered(self):
        """An upstream without 8BITMIME gets no BODY= it would refuse."""
        self.assertEqual(self.mailFromAnswering(b"250 HELP"),
                         b"MAIL FROM:<a@b.example>\r\n")

    def test_heloRefused(self):
        """EHLO and HELO refused: give up (the stock code sends HELO forever)."""
        c = Conversation()
        c.greeted(b"220 upstream.example SMTP")
        c.reply(b"502 5.5.2 Command not recognized")
        self.assertEqual(c.reply(b"550 5.7.1 Go away"), b"")
        self.assertTrue(c.transport.disconnecting)
        c.close()
        self.assertUnavailable(c)

    def test_starttlsRefused(self):
        """STARTTLS announced, then refused: no fallback to clear text."""
        c = Conversation(config=attrs.evolve(UPSTREAM, tls="starttls"))
        c.greeted()
        self.assertEqual(c.reply(b"250-upstream.example", b"250 STARTTLS"), b"STARTTLS\r\n")
        self.assertEqual(c.reply(b"454 4.7.0 TLS not available"), b"QUIT\r\n")
        c.reply(b"221 2.0.0 Bye")
        c.close()
        self.assertUnavailable(c)

    def test_greetingRefused(self):
        """A 554 greeting is about the proxy's connection, not the message: 451."""
        c = Conversation()
        c.connect()
        c.reply(b"554 5.3.2 No service")
        c.close()
        self.assertUnavailable(c)

    def test_secondRecipientRefused(self):
        """All or nothing: no DATA; the refusal is relayed."""
        c = Conversation(recipients=["a@example.com", "b@example.com"])
        self.assertEqual(c.toRecipients(b"250 2.1.5 Ok"), b"RCPT TO:<b@example.com>\r\n")
        self.assertEqual(c.reply(b"550 5.1.1 <b@example.com>: User unknown"), b"QUIT\r\n")
        self.assertEqual(
            c.finish(), replies.Reply(550, "5.1.1 <b@example.com>: User unknown")
        )

    def test_permanentRefusalWins(self):
        c = Conversation(recipients=["a@example.com", "b@example.com", "c@example.com"])
        sent = c.toRecipients(
            b"450 4.2.1 Mailbox busy", b"550 5.1.1 No such user", b"250 2.1.5 Ok"
        )
        self.assertEqual(sent, b"QUIT\r\n")
        self.assertEqual(c.finish(), replies.Reply(550, "5.1.1 No such user"))

    def test_temporaryRefusal(self):
        c = Conversation(recipients=["a@example.com", "b@example.com"])
        self.assertEqual(c.toRecipients(b"250 2.1.5 Ok", b"450 Mailbox busy"), b"QUIT\r\n")
        self.assertEqual(c.finish(), replies.Reply(450, "4.0.0 Mailbox busy"))

    def test_multilineRefusal(self):
        c = Conversation()
        c.toRecipients(b"550-5.1.1 No such user", b"550 5.1.1 Try another")
        self.assertEqual(c.finish(), replies.Reply(550, "5.1.1 No such user 5.1.1 Try another"))

    def test_senderRefused(self):
        c = Conversation()
        c.greeted()
        c.reply(b"250 upstream.example")
        self.assertEqual(c.reply(b"553 5.7.1 Sender rejected"), b"QUIT\r\n")
        self.assertEqual(c.finish(), replies.Reply(553, "5.7.1 Sender rejected"))

    def test_dataRefused(self):
        c = Conversation()
        self.assertEqual(c.toRecipients(b"250 2.1.5 Ok"), b"DATA\r\n")
        self.assertEqual(c.reply(b"452 4.3.1 Insufficient system storage"), b"QUIT\r\n")
        self.assertIsNone(c.transport.producer)
        self.assertEqual(c.finish(), replies.Reply(452, "4.3.1 Insufficient system storage"))

    def test_dataAnsweredWithSuccess(self):
        """A 250 to DATA is not a delivery: nothing was sent."""
        c = Conversation()
        c.toRecipients(b"250 2.1.5 Ok")
        c.reply(b"250 2.0.0 Ok")
        self.assertTrue(c.transport.disconnecting)
        c.close()
        self.assertUnavailable(c)

    def test_finalRefused(self):
        c = Conversation()
        c.toData()
        self.assertEqual(c.reply(b"554 5.7.1 Rejected as spam"), b"QUIT\r\n")
        reply = c.finish(quitReply=b"221 Bye")
        self.assertEqual(reply, replies.Reply(554, "5.7.1 Rejected as spam"))

    def test_silentUpstream(self):
        """The timeout is per step; past it the connection is aborted: 451."""
        c = Conversation()
        c.connect()
        c.reactor.advance(59)
        c.reply(b"220 upstream.example ESMTP")
        c.reactor.advance(59)
        c.reply(b"250 upstream.example")
        c.reactor.advance(59)
        self.assertFalse(c.transport.disconnecting)
        c.reactor.advance(1)
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(c.results, [])
        c.close(error.ConnectionAborted)
        self.assertUnavailable(c)
        self.assertIn("Timeout", c.warnings()[0]["cause"])

    def test_silentAfterSuccess(self):
        """A timeout waiting for the QUIT reply does not undo the delivery."""
        c = Conversation()
        c.toData()
        c.reply(b"250 2.0.0 Ok: queued as ABC")
        c.reactor.advance(60)
        self.assertTrue(c.transport.disconnected)
        c.close(error.ConnectionAborted)
        self.assertEqual(c.results, [replies.Reply(250, "2.0.0 Ok: queued as ABC")])

    def test_connectionFailed(self):
        """Refused or timed out: 451, and no second connection."""
        c = Conversation()
        with capturedLogs() as logged:
            refused = Failure(error.ConnectionRefusedError())
            c.factory.clientConnectionFailed(c.connector, refused)
        c.logged.extend(logged)
        self.assertUnavailable(c)
        self.assertIn("Connection was refused", c.warnings()[0]["cause"])

    def test_lostAfterFinalDot(self):
        """The outcome is unknown: 451, and no resend (no duplicates)."""
        c = Conversation()
        self.assertTrue(c.toData().endswith(b".\r\n"))
        c.close(error.ConnectionLost)
        self.assertUnavailable(c)

    def test_lostBeforeGreeting(self):
        c = Conversation()
        c.connect()
        c.close(error.ConnectionLost)
        self.assertUnavailable(c)

    def test_garbledReply(self):
        c = Conversation()
        c.connect()
        c.reply(b"hello")
        self.assertTrue(c.transport.disconnecting)
        c.close()
        self.assertUnavailable(c)

    def test_badHostname(self):
        """Even a set-up error gives a reply, never a failure."""
        with capturedLogs() as logged:
            d = deliver_once(
                MemoryReactorClock(), UPSTREAM, "bad..name", "", ["a@b"], BytesIO(b"")
            )
        self.assertEqual(self.successResultOf(d), replies.UPSTREAM_UNAVAILABLE)
        self.assertEqual(len(logged), 1)


def lineAt(data, offset, line):
    """Pad C{data} with filler lines so that C{line} starts at C{offset}."""
    gap = offset - len(data)
    assert gap == 0 or gap >= 2
    while gap > 1002:
        data += b"x" * 998 + b"\r\n"
        gap -= 1000
    if gap:
        data += b"y" * (gap - 2) + b"\r\n"
    return data + line


def unstuffed(data):
    return [line[1:] if line.startswith(b".") else line for line in data.split(b"\r\n")[:-1]]


class LoopbackTests(unittest.TestCase):
    """The sender against Twisted's SMTP server over real loopback sockets."""

    def setUp(self):
        self.server = StockServerFactory()
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.upstream = Upstream(host="127.0.0.1", port=self.port.getHost().port, timeout=10)

    def deliver(self, sender, recipients, data):
        return deliver_once(
            reactor, self.upstream, "proxy.example", sender, recipients, BytesIO(data)
        )

    def whenClosed(self, reply):
        closed = defer.gatherResults([p.closed for p in self.server.protocols])
        return closed.addCallback(lambda _: reply)

    @defer.inlineCallbacks
    def test_dotsAtChunkBoundaries(self):
        """
        Lines starting with a dot at the start of the data and exactly at
        FileSender chunk boundaries, end-marker lookalikes among them, reach
        the upstream as sent and come out as one unstuffed message.
        """
        data = b"..\r\nRSET\r\n"
        data = lineAt(data, CHUNK, b"..\r\nMAIL FROM:<evil@example.com>\r\n")
        data = lineAt(data, 2 * CHUNK - 1, b"..\r\nRCPT TO:<evil@example.com>\r\n")
        data = lineAt(data, 3 * CHUNK - 1, b"\r\n..x\r\n")
        data = lineAt(data, 4 * CHUNK, b"..\r\nQUIT\r\n")
        recipients = ["a@example.com", "b@example.com"]
        reply = yield self.deliver("", recipients, data)
        yield self.whenClosed(reply)
        self.assertEqual(reply, replies.Reply(250, "2.0.0 Delivery in progress"))
        [server] = self.server.protocols
        self.assertEqual(
            b"".join(server.received),
            b"EHLO proxy.example\r\nMAIL FROM:<>\r\n"
            b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            + data + b".\r\nQUIT\r\n",
        )
        # Twisted's server puts an empty line before a first line without a colon.
        expected = [b""] + unstuffed(data)
        self.assertEqual(self.server.delivery.messages, [expected, expected])

    @defer.inlineCallbacks
    def test_exactBytes(self):
        data = b"From: a@example.com\r\nSubject: \xc3\xa4\r\n\r\nbody\r\n\r\n"
        reply = yield self.deliver("s@example.com", ["r@example.com"], data)
        yield self.whenClosed(reply)
        self.assertEqual(reply.code, 250)
        received = b"".join(self.server.protocols[0].received)
        self.assertIn(b"MAIL FROM:<s@example.com>\r\n", received)
        self.assertTrue(received.endswith(b"DATA\r\n" + data + b".\r\nQUIT\r\n"))
        self.assertEqual(self.server.delivery.messages, [unstuffed(data)])

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        yield self.port.stopListening()
        with capturedLogs() as logged:
            reply = yield self.deliver("", ["a@example.com"], b"")
        self.assertEqual(reply, replies.UPSTREAM_UNAVAILABLE)
        ours = [e for e in logged if e.get("log_namespace") == "smtpproxy.upstream"]
        self.assertEqual([e["log_level"] for e in ours], [LogLevel.warn])


class SecureUpstreamTests(unittest.TestCase):
    """
    TLS and AUTH toward the recording upstream over loopback, with real
    certificates: verified or nothing, and never the message in clear.
    """

    PASSWORD = "pass word\u00e9"

    def setUp(self):
        self.certs = self.certificates()
        self.logged = []

    def certificates(self, hostname="localhost"):
        directory = self.mktemp()
        os.mkdir(directory)
        return make_certificates(directory, hostname)

    def start(self, **options):
        fake = start_upstream(reactor, **options)
        self.addCleanup(fake.close)
        return fake

    @defer.inlineCallbacks
    def deliver(self, fake, host="127.0.0.1", trusted=None, **settings):
        """Deliver one message with C{settings}; the reply, once the upstream saw the close."""
        config = Upstream(
            host=host,
            port=fake.port,
            timeout=10,
            trust_root=trust_root(trusted or self.certs),
            **settings,
        )
        with capturedLogs() as logged:
            reply = yield deliver_once(
                reactor, config, "proxy.example", "a@example.com", ["b@example.net"],
                BytesIO(MESSAGE),
            )
            yield fake.wait_idle()
        self.logged.extend(logged)
        return reply

    def assertNotDelivered(self, fake, reply, cause, level=LogLevel.warn):
        """451 4.4.1, nothing received, and one log event at C{level} naming the cause."""
        self.assertEqual(reply, replies.UPSTREAM_UNAVAILABLE)
        self.assertEqual(fake.messages, [])
        [event] = self.logged
        self.assertEqual((event["log_namespace"], event["log_level"]), ("smtpproxy.upstream", level))
        self.assertIn(cause, formatEvent(event))

    @defer.inlineCallbacks
    def test_starttlsVerified(self):
        """The certificate matches 127.0.0.1 through its IP SAN."""
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, tls="starttls")
        self.assertEqual(reply.code, 250)
        [message] = fake.messages
        self.assertTrue(message.tls)
        self.assertEqual(message.data, MESSAGE)
        self.assertEqual(self.logged, [])

    @defer.inlineCallbacks
    def test_starttlsByName(self):
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, host="localhost", tls="starttls")
        self.assertEqual(reply.code, 250)
        self.assertTrue(fake.messages[0].tls)

    @defer.inlineCallbacks
    def test_starttlsUntrusted(self):
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, trusted=self.certificates(), tls="starttls")
        self.assertNotDelivered(fake, reply, "certificate verify failed")

    @defer.inlineCallbacks
    def test_starttlsWrongName(self):
        """Trusted CA, but the certificate is for another name than the host."""
        self.certs = self.certificates(hostname="other.test")
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, host="localhost", tls="starttls")
        self.assertNotDelivered(fake, reply, "TLS handshake failed")

    @defer.inlineCallbacks
    def test_starttlsNotOffered(self):
        """No STARTTLS (or stripped on the path): the message waits, never goes in clear."""
        fake = self.start()
        reply = yield self.deliver(fake, tls="starttls")
        self.assertNotDelivered(fake, reply, "does not support secure communication")

    @defer.inlineCallbacks
    def test_noneNeverUpgrades(self):
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, tls="none")
        self.assertEqual(reply.code, 250)
        self.assertFalse(fake.messages[0].tls)

    @defer.inlineCallbacks
    def test_implicitTls(self):
        fake = self.start(tls=server_options(self.certs), implicit_tls=True)
        reply = yield self.deliver(fake, tls="tls")
        self.assertEqual(reply.code, 250)
        self.assertTrue(fake.messages[0].tls)

    @defer.inlineCallbacks
    def test_implicitTlsUntrusted(self):
        fake = self.start(tls=server_options(self.certs), implicit_tls=True)
        reply = yield self.deliver(fake, trusted=self.certificates(), tls="tls")
        self.assertNotDelivered(fake, reply, "certificate verify failed")

    @defer.inlineCallbacks
    def test_login(self):
        fake = self.start(tls=server_options(self.certs), logins={"ann": self.PASSWORD})
        reply = yield self.deliver(fake, tls="starttls", username="ann", password=self.PASSWORD)
        self.assertEqual(reply.code, 250)
        self.assertEqual((fake.messages[0].login, fake.messages[0].tls), ("ann", True))

    @defer.inlineCallbacks
    def test_kept_connection_does_tls_and_login_once(self):
        """Three messages on one kept connection: one STARTTLS, one AUTH, then MAIL each time."""
        fake = self.start(tls=server_options(self.certs), logins={"ann": self.PASSWORD})
        config = Upstream(host="127.0.0.1", port=fake.port, timeout=10, tls="starttls",
                          trust_root=trust_root(self.certs), username="ann",
                          password=self.PASSWORD)
        pool = Pool(reactor, config, "proxy.example")
        for n in range(3):
            reply = yield pool.deliver("a@example.com", [f"b{n}@example.net"], BytesIO(MESSAGE))
            self.assertEqual(reply.code, 250)
        yield pool.close()
        yield fake.wait_idle()
        (commands,) = fake.commands
        verbs = [line.split()[0] for line in commands]
        self.assertEqual((verbs.count(b"STARTTLS"), verbs.count(b"AUTH"), verbs.count(b"MAIL")),
                         (1, 1, 3))
        self.assertEqual([(m.login, m.tls) for m in fake.messages], [("ann", True)] * 3)

    @defer.inlineCallbacks
    def test_loginImplicitTls(self):
        fake = self.start(
            tls=server_options(self.certs), implicit_tls=True, logins={"ann": self.PASSWORD}
        )
        reply = yield self.deliver(fake, tls="tls", username="ann", password=self.PASSWORD)
        self.assertEqual(reply.code, 250)
        self.assertEqual(fake.messages[0].login, "ann")

    @defer.inlineCallbacks
    def test_loginRefused(self):
        """
        The proxy's own credentials are wrong: the operator's problem, so an
        error in the log, and for the client only a temporary 451.  The
        password is in no log event, neither as given nor in base64.
        """
        fake = self.start(tls=server_options(self.certs), logins={"ann": "other"})
        reply = yield self.deliver(fake, tls="starttls", username="ann", password=self.PASSWORD)
        self.assertNotDelivered(fake, reply, "535", level=LogLevel.error)
        password = self.PASSWORD.encode("utf-8")
        secrets = [
            self.PASSWORD,
            base64.b64encode(password).decode(),
            base64.b64encode(b"ann\0ann\0" + password).decode(),
            base64.b64encode(b"\0ann\0" + password).decode(),
        ]
        for event in self.logged:
            text = formatEvent(event) + repr(event)
            for secret in secrets:
                self.assertNotIn(secret, text)

    @defer.inlineCallbacks
    def test_loginNotOffered(self):
        fake = self.start(tls=server_options(self.certs))
        reply = yield self.deliver(fake, tls="starttls", username="ann", password=self.PASSWORD)
        self.assertNotDelivered(fake, reply, "Authentication", level=LogLevel.error)


class UpstreamConfigTests(unittest.SynchronousTestCase):
    def test_passwordNotInRepr(self):
        config = Upstream(
            host="mx.example", port=465, tls="tls", username="ann", password="s3cret"
        )
        self.assertIn("ann", repr(config))
        self.assertNotIn("s3cret", repr(config))

    def test_credentialsNeedTls(self):
        with self.assertRaises(ValueError) as raised:
            Upstream(host="mx.example", port=25, username="ann", password="s3cret")
        self.assertIn("never sent in clear", str(raised.exception))

    def test_userAndPasswordTogether(self):
        self.assertRaises(ValueError, Upstream, "mx.example", 25, tls="tls", username="ann")
        self.assertRaises(ValueError, Upstream, "mx.example", 25, tls="tls", password="s3cret")

    def test_tlsModes(self):
        self.assertIsNone(Upstream("mx.example", 25).client_tls)
        self.assertIsNotNone(Upstream("mx.example", 25, tls="starttls").client_tls)
        self.assertRaises(ValueError, Upstream, "mx.example", 25, tls="ssl")
