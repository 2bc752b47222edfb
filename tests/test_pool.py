"""
Tests for L{smtpproxy.pool} and L{smtpproxy.relay}: kept upstream connections
and pipelining, against scripted upstream replies in memory, so every step
(a connection dying while idle, a 421 at the next MAIL) is exact.
"""

from io import BytesIO

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from smtpproxy import replies
from smtpproxy.config import Upstream
from smtpproxy.metrics import Metrics
from smtpproxy.pool import QUIT_TIMEOUT, Pool

UPSTREAM = Upstream(host="upstream.example", port=25, timeout=60, pool_idle=2,
                    pool_timeout=30, pool_messages=3)
DATA = b"Subject: hi\r\n\r\nbody\r\n"
QUEUED = replies.Reply(250, "2.0.0 Ok: queued as A")


class Wire:
    """One upstream connection: feed it replies, read what the proxy wrote."""

    def __init__(self, reactor, index):
        self.factory = reactor.tcpClients[index][2]
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def reply(self, *lines):
        self.protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
        return self.sent()

    def sent(self):
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        value = self.transport.value()
        self.transport.clear()
        return value

    def ready(self, offers=b"250 HELP"):
        """Greeting and EHLO: the proxy's first MAIL FROM (and RCPTs if pipelined)."""
        assert self.reply(b"220 upstream.example ESMTP") == b"EHLO proxy.example\r\n"
        return self.reply(b"250-upstream.example", offers)

    def lose(self, reason=error.ConnectionDone):
        self.protocol.connectionLost(Failure(reason()))
        self.factory.clientConnectionLost(None, Failure(reason()))


class PoolTestCase(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.metrics = Metrics()
        self.pool = Pool(self.reactor, UPSTREAM, "proxy.example", metrics=self.metrics)
        self.results = []

    def send(self, recipients=("bob@example.net",), sender="alice@example.com"):
        """Hand one message to the pool; its reply lands in C{self.results}."""
        self.pool.deliver(sender, list(recipients), BytesIO(DATA)).addCallback(
            self.results.append)

    def wire(self, index):
        return Wire(self.reactor, index)

    def deliver_serially(self, wire, first=b"MAIL FROM:<alice@example.com>\r\n"):
        """MAIL (already sent, C{first}), RCPT, DATA, data: up to the reply to the dot."""
        self.assertEqual(wire.reply(b"250 2.1.0 Ok"), b"RCPT TO:<bob@example.net>\r\n")
        self.assertEqual(wire.reply(b"250 2.1.5 Ok"), b"DATA\r\n")
        self.assertEqual(wire.reply(b"354 go ahead"), DATA + b".\r\n")
        return wire.reply(b"250 2.0.0 Ok: queued as A")

    def idle(self):
        return self.metrics.registry.get_sample_value("smtpproxy_upstream_idle_connections")


class ReuseTests(PoolTestCase):
    def test_second_message_starts_at_mail_from(self):
        """The reply comes at once, no QUIT; the next message needs no new connection."""
        self.send()
        wire = self.wire(0)
        self.assertEqual(wire.ready(), b"MAIL FROM:<alice@example.com>\r\n")
        self.assertEqual(self.deliver_serially(wire), b"")
        self.assertEqual((self.results, self.idle()), ([QUEUED], 1))
        self.send()
        self.assertEqual(wire.sent(), b"MAIL FROM:<alice@example.com>\r\n")
        self.deliver_serially(wire)
        self.assertEqual(self.results, [QUEUED, QUEUED])
        self.assertIsNone(wire.protocol._envelope)  # an idle connection holds no message
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "smtpproxy_upstream_connections_total"), 1)

    def test_rset_after_a_refused_recipient(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.assertEqual(wire.reply(b"250 2.1.0 Ok"), b"RCPT TO:<bob@example.net>\r\n")
        self.assertEqual(wire.reply(b"550 5.1.1 No such user"), b"")
        self.assertEqual(self.results, [replies.Reply(550, "5.1.1 No such user")])
        self.send()
        self.assertEqual(wire.sent(), b"RSET\r\n")
        self.assertEqual(wire.reply(b"250 2.0.0 Ok"), b"MAIL FROM:<alice@example.com>\r\n")

    def test_refused_rset_sends_the_message_on_a_new_connection(self):
        self.send(recipients=["bob@example.net"])
        wire = self.wire(0)
        wire.ready()
        wire.reply(b"250 2.1.0 Ok")
        wire.reply(b"450 4.2.1 busy")
        self.send()
        wire.sent()
        self.assertEqual(wire.reply(b"500 what"), b"QUIT\r\n")
        fresh = self.wire(1)
        self.assertEqual(fresh.ready(), b"MAIL FROM:<alice@example.com>\r\n")
        self.deliver_serially(fresh)
        self.assertEqual(self.results[-1], QUEUED)

    def test_at_most_pool_messages_per_connection(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.deliver_serially(wire)
        for _ in range(2):
            self.send()
            wire.sent()
            last = self.deliver_serially(wire)
        self.assertEqual(last, b"QUIT\r\n")
        self.assertEqual(self.idle(), 0)

    def test_at_most_pool_idle_connections(self):
        for _ in range(3):
            self.send()
        wires = [self.wire(index) for index in range(3)]
        ends = []
        for wire in wires:
            wire.ready()
            ends.append(self.deliver_serially(wire))
        self.assertEqual(ends, [b"", b"", b"QUIT\r\n"])
        self.assertEqual(self.idle(), 2)

    def test_idle_connection_quits_after_pool_timeout(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.deliver_serially(wire)
        self.reactor.advance(UPSTREAM.pool_timeout)
        self.assertEqual((wire.sent(), self.idle()), (b"QUIT\r\n", 0))
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_close_quits_idle_connections(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.deliver_serially(wire)
        closed = self.pool.close()
        self.assertEqual(wire.sent(), b"QUIT\r\n")
        self.assertNoResult(closed)
        self.reactor.advance(QUIT_TIMEOUT)
        self.assertTrue(wire.transport.disconnecting)
        wire.lose()
        self.successResultOf(closed)


class DeadWhileIdleTests(PoolTestCase):
    """A kept connection that died: the message still goes, exactly once."""

    def kept(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.deliver_serially(wire)
        return wire

    def assertDeliveredOnANewConnection(self):
        """The second message goes, once, on a second connection."""
        fresh = self.wire(1)
        fresh.ready()
        self.deliver_serially(fresh)
        self.assertEqual(self.results, [QUEUED, QUEUED])
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_closed_while_idle_is_forgotten(self):
        self.kept().lose()
        self.assertEqual(self.idle(), 0)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_421_while_idle_ends_it(self):
        wire = self.kept()
        wire.reply(b"421 4.4.2 Idle timeout")
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(self.idle(), 0)

    def test_found_dead_at_mail_goes_on_a_new_connection(self):
        wire = self.kept()
        self.send()
        self.assertEqual(wire.sent(), b"MAIL FROM:<alice@example.com>\r\n")
        wire.lose(error.ConnectionLost)
        self.assertEqual(len(self.results), 1)
        self.assertDeliveredOnANewConnection()

    def test_421_at_mail_goes_on_a_new_connection(self):
        wire = self.kept()
        self.send()
        wire.sent()
        wire.reply(b"421 4.4.2 Idle timeout, closing")
        self.assertTrue(wire.transport.disconnecting)
        self.assertDeliveredOnANewConnection()

    def test_421_on_the_new_connection_too_is_the_reply(self):
        wire = self.kept()
        self.send()
        wire.reply(b"421 4.4.2 closing")
        fresh = self.wire(1)
        fresh.ready()
        fresh.reply(b"421 4.3.2 System shutting down")
        self.assertEqual(self.results[-1], replies.Reply(421, "4.3.2 System shutting down"))
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_no_second_attempt_once_mail_was_accepted(self):
        wire = self.kept()
        self.send()
        wire.reply(b"250 2.1.0 Ok")
        wire.lose(error.ConnectionLost)
        self.assertEqual(self.results[-1], replies.UPSTREAM_UNAVAILABLE)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_no_second_attempt_after_the_final_dot(self):
        wire = self.kept()
        self.send()
        wire.sent()
        wire.reply(b"250 2.1.0 Ok")
        wire.reply(b"250 2.1.5 Ok")
        self.assertEqual(wire.reply(b"354 go ahead"), DATA + b".\r\n")
        wire.lose(error.ConnectionLost)
        self.assertEqual(self.results[-1], replies.UPSTREAM_UNAVAILABLE)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_timeout_is_never_reused(self):
        self.send()
        wire = self.wire(0)
        wire.ready()
        self.reactor.advance(UPSTREAM.timeout)
        self.assertEqual(self.results, [])
        wire.lose()
        self.assertEqual((self.results, self.idle()), ([replies.UPSTREAM_UNAVAILABLE], 0))


class PipeliningTests(PoolTestCase):
    PIPELINING = b"250 PIPELINING"

    def test_mail_and_recipients_in_one_write(self):
        self.send(recipients=["bob@example.net", "carol@example.org"])
        wire = self.wire(0)
        self.assertEqual(wire.ready(self.PIPELINING),
                         b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\n"
                         b"RCPT TO:<carol@example.org>\r\n")
        self.assertEqual(wire.reply(b"250 Ok", b"250 Ok", b"250 Ok"), b"DATA\r\n")

    def test_one_refused_recipient_means_no_data(self):
        """All or nothing: the client hears the refusal, nobody gets the message."""
        self.send(recipients=["bob@example.net", "carol@example.org"])
        wire = self.wire(0)
        wire.ready(self.PIPELINING)
        self.assertEqual(wire.reply(b"250 Ok", b"250 Ok", b"550 5.1.1 Unknown"), b"")
        self.assertEqual(self.results, [replies.Reply(550, "5.1.1 Unknown")])
        self.send()
        self.assertEqual(wire.sent(), b"RSET\r\n")

    def test_permanent_refusal_wins(self):
        self.send(recipients=["bob@example.net", "carol@example.org"])
        wire = self.wire(0)
        wire.ready(self.PIPELINING)
        wire.reply(b"250 Ok", b"452 4.2.2 Full", b"550 5.1.1 Unknown")
        self.assertEqual(self.results, [replies.Reply(550, "5.1.1 Unknown")])

    def test_refused_sender_waits_for_every_answer(self):
        """The RCPTs' 503s are read before the reply, so the connection stays in step."""
        self.send(recipients=["bob@example.net", "carol@example.org"])
        wire = self.wire(0)
        wire.ready(self.PIPELINING)
        wire.reply(b"553 5.7.1 Sender refused", b"503 5.5.1 need MAIL")
        self.assertEqual(self.results, [])
        self.assertEqual(wire.reply(b"503 5.5.1 need MAIL"), b"")
        self.assertEqual(self.results, [replies.Reply(553, "5.7.1 Sender refused")])
        self.send()
        self.assertEqual(wire.sent(), b"MAIL FROM:<alice@example.com>\r\n"
                                      b"RCPT TO:<bob@example.net>\r\n")


class XclientTests(unittest.TestCase):
    def test_xclient_connection_carries_one_message(self):
        reactor = MemoryReactorClock()
        config = Upstream(host="upstream.example", port=25, xclient=True)
        pool = Pool(reactor, config, "proxy.example")
        results = []
        pool.deliver("a@b.example", ["c@d.example"], BytesIO(DATA),
                     client={"ADDR": "192.0.2.1"}).addCallback(results.append)
        wire = Wire(reactor, 0)
        self.assertTrue(wire.ready(b"250 XCLIENT ADDR NAME").startswith(b"XCLIENT ADDR=192.0.2.1"))
        self.assertEqual(wire.reply(b"220 again"), b"EHLO proxy.example\r\n")
        self.assertEqual(wire.reply(b"250 XCLIENT ADDR"), b"MAIL FROM:<a@b.example>\r\n")
        wire.reply(b"250 Ok")
        wire.reply(b"250 Ok")
        wire.reply(b"354 go")
        self.assertEqual(wire.reply(b"250 queued"), b"QUIT\r\n")
        self.assertEqual(results, [replies.Reply(250, "2.0.0 queued")])
