"""
Connection limits, timeouts in every phase, and output flow control
(issue 3): in memory where a clock decides, over loopback where the real
transport has to take part.
"""

import itertools

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Limits, replies
from smtpproxy.metrics import Metrics
from smtpproxy.connections import REPORT_INTERVAL, ConnectionTable
from smtpproxy.session import CLOSE_GRACE
from tests.support.client import ScriptedClient
from tests.support.stack import Stack
from tests.support.session import QUEUED, SessionTestCase, TLSStringTransport

TOO_MANY = "421 4.7.0 Too many connections, try again later"
TIMEOUT = "421 4.4.2 Timeout, closing connection"


class ConnectionTableTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = ConnectionTable(Limits(max_connections=3, max_connections_per_ip=2), self.clock, Metrics())

    def test_per_address_and_total(self):
        self.assertIsNone(self.table.admit("192.0.2.1"))
        self.assertIsNone(self.table.admit("192.0.2.1"))
        self.assertEqual(self.table.admit("192.0.2.1"), replies.TOO_MANY_CONNECTIONS)
        self.assertIsNone(self.table.admit("192.0.2.2"))
        self.assertEqual(self.table.admit("192.0.2.3"), replies.TOO_MANY_CONNECTIONS)
        self.assertEqual(self.table.total, 3)

    def test_release_frees_the_place_and_forgets_the_address(self):
        for address in ["192.0.2.1", "192.0.2.2", "192.0.2.3"]:
            self.table.admit(address)
        self.table.release("192.0.2.1")
        self.assertEqual((self.table.total, self.table.addresses), (2, 2))
        self.assertIsNone(self.table.admit("192.0.2.4"))

    def test_refused_addresses_are_not_remembered(self):
        """However many addresses knock, the table holds only admitted ones."""
        for n in range(3):
            self.table.admit(f"192.0.2.{n}")
        for n in range(10000):
            self.table.admit(f"10.{n >> 8}.{n & 255}.1")
        self.assertEqual(self.table.addresses, 3)

    def test_refusals_are_summarised(self):
        for n in range(3):
            self.table.admit(f"192.0.2.{n}")
        with capturedLogs() as events:
            for _ in range(1000):
                self.table.admit("198.51.100.7")
            self.table.admit("198.51.100.8")
            self.clock.advance(REPORT_INTERVAL - 1)
            self.assertEqual(len(events), 1)
            self.clock.advance(1)
            self.assertEqual(len(events), 2)
            self.clock.advance(REPORT_INTERVAL)
            self.table.admit("198.51.100.9")
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 3)
        self.assertIn("refused 1 connection(s) at the limit (1 at max_connections=3)", lines[0])
        self.assertIn("refused 1000 connection(s)", lines[1])
        self.assertIn("the last from 198.51.100.8", lines[1])
        self.assertIn("refused 1 connection(s)", lines[2])

    def test_summary_written_by_the_timer(self):
        """The tail of a flood is told when the interval ends, not at the next refusal."""
        for n in range(3):
            self.table.admit(f"192.0.2.{n}")
        with capturedLogs() as events:
            self.table.admit("198.51.100.7")
            self.table.admit("198.51.100.7")
            self.clock.advance(REPORT_INTERVAL)
            self.clock.advance(REPORT_INTERVAL)
        self.assertEqual(len(events), 2)
        self.assertIn("refused 1 connection(s)", formatEvent(events[1]))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionLimitTests(TestCase):
    """The limits on real connections: 421 instead of the greeting, the others untouched."""

    def setUp(self):
        # Loopback clients are exempt from the per-address limit by default:
        # these tests are about that limit, so nobody is exempt here.
        limits = Limits(max_connections=3, max_connections_per_ip=2, limit_exempt=())
        self.stack = Stack(reactor, self.mktemp(), limits)
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def connect(self, source="127.0.0.1"):
        """A client from C{source}; fires with it and its first reply."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.stack.port, bindAddress=(source, 0))
        client = yield connectProtocol(endpoint, ScriptedClient())
        self.addCleanup(client.close)
        (first,) = yield client.replies(1)
        return client, first

    @defer.inlineCallbacks
    def test_per_address_limit(self):
        first, _ = yield self.connect()
        yield self.connect()
        refused, reply = yield self.connect()
        self.assertEqual(str(reply), TOO_MANY)
        yield refused.wait_closed()
        _, other = yield self.connect("127.0.0.2")
        self.assertEqual(other.code, 220)
        reply = yield first.command(b"NOOP")
        self.assertEqual(reply.code, 250)

    @defer.inlineCallbacks
    def test_total_limit_and_release(self):
        first, _ = yield self.connect("127.0.0.1")
        yield self.connect("127.0.0.2")
        yield self.connect("127.0.0.3")
        _, reply = yield self.connect("127.0.0.4")
        self.assertEqual(str(reply), TOO_MANY)
        yield first.command(b"QUIT", expect=221)
        yield first.wait_closed()
        _, reply = yield self.connect("127.0.0.4")
        self.assertEqual(reply.code, 220)
        self.assertEqual(self.stack.factory.connections.total, 3)

    @defer.inlineCallbacks
    def test_session_past_its_221_no_longer_counts(self):
        """Its close may not be processed yet; the client is done with it, and may reconnect."""
        first = yield self.stack.session(login=False)
        second = yield self.stack.session(login=False)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        yield first.command(b"QUIT", expect=221)
        _, reply = yield self.connect()
        self.assertEqual(reply.code, 220)
        self.assertEqual(self.stack.factory.connections.total, 2)

    @defer.inlineCallbacks
    def test_sequential_reconnects_below_the_per_address_limit(self):
        """45 TLS clients from one address, each reconnecting as soon as it has its 221: no 421."""
        # Loopback is exempt by default; the limit must apply for this to prove anything.
        stack = Stack(reactor, self.mktemp(), Limits(max_connections_per_ip=50, limit_exempt=()))
        self.addCleanup(stack.close)

        @defer.inlineCallbacks
        def reconnecting(rounds):
            for _ in range(rounds):
                client = yield stack.session(login=False)  # fails on a 421
                self.addCleanup(client.close)
                yield client.command(b"QUIT", expect=221)
                client.close()

        yield defer.gatherResults([reconnecting(3) for _ in range(45)])
        self.assertEqual(stack.factory.metrics.registry.get_sample_value("smtpproxy_connections_total"), 135)


class RefusedSessionTests(SessionTestCase):
    limits = Limits(max_connections=1)

    def test_refused_session_answers_nothing_else(self):
        refused = self.factory.buildProtocol(None)
        transport = TLSStringTransport()
        refused.makeConnection(transport)
        refused.dataReceived(b"EHLO client.test\r\nNOOP\r\n")
        self.assertEqual(transport.value().decode(), TOO_MANY + "\r\n")
        self.assertTrue(transport.disconnecting)
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.connections.total, 1)

    def test_refused_session_that_never_takes_its_reply_is_cut_off(self):
        """Over implicit TLS the 421 waits for a handshake that may never come."""
        refused = self.factory.buildProtocol(None)
        transport = TLSStringTransport()
        refused.makeConnection(transport)
        self.clock.advance(self.limits.pretls_timeout)
        self.assertTrue(transport.disconnected)


class TimeoutTests(SessionTestCase):
    limits = Limits(pretls_timeout=30, idle_timeout=300, data_timeout=600)

    def last_line(self):
        return self.transport.value().decode().split("\r\n")[-2]

    def test_pretls_deadline_is_not_reset_by_input(self):
        self.clock.advance(29)
        self.send(b"NOOP\r\n")
        self.clock.advance(1)
        self.assertEqual(self.last_line(), TIMEOUT)
        self.assertTrue(self.transport.disconnecting)

    def test_pretls_deadline_runs_until_a_command_inside_tls(self):
        """A client that says STARTTLS but never finishes the handshake keeps no slot."""
        self.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.clock.advance(30)
        self.assertEqual(self.last_line(), TIMEOUT)

    def test_idle_timeout_per_command(self):
        self.tls()
        self.clock.advance(299)
        self.send(b"NOOP\r\n")
        self.clock.advance(299)
        self.send(b"NO")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.last_line(), TIMEOUT)

    def test_data_timeout_counts_from_the_last_bytes(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: slow\r\n\r\n")
        for _ in range(5):
            self.clock.advance(599)
            self.send(b"still coming\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(600)
        self.assertEqual(self.last_line(), TIMEOUT)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.deliveries, [])

    def test_no_timeout_until_the_outcome_then_idle_again(self):
        self.factory.outcome = defer.Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.clock.advance(10000)
        self.assertFalse(self.transport.disconnecting)
        self.factory.outcome.callback(QUEUED)
        self.clock.advance(300)
        self.assertEqual(self.last_line(), TIMEOUT)

    def test_no_timer_left_when_the_client_hangs_up_after_its_dot(self):
        self.factory.outcome = defer.Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.session.connectionLost(Failure(ConnectionDone()))
        self.factory.outcome.callback(QUEUED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.factory.deliveries), 1)

    def test_client_not_reading_its_last_reply_is_cut_off(self):
        """Within a few seconds, not after idle_timeout: the slot is free again."""
        self.send(b"QUIT\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)
        self.clock.advance(CLOSE_GRACE - 0.1)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnected)

    def test_timed_out_client_is_cut_off_after_the_grace(self):
        self.clock.advance(30)
        self.assertEqual(self.last_line(), TIMEOUT)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(self.transport.disconnected)


class FlowControlTests(SessionTestCase):
    """The session stops taking commands while its replies cannot be written."""

    def test_registered_as_streaming_producer(self):
        self.assertIs(self.transport.producer, self.session)
        self.assertTrue(self.transport.streaming)

    def test_paused_session_takes_no_command(self):
        self.session.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.send(b"NOOP\r\nNOOP\r\n"), [])
        self.transport.clear()
        self.session.resumeProducing()
        self.assertEqual(self.transport.value(), b"250 2.0.0 OK\r\n" * 2)
        self.assertEqual(self.transport.producerState, "producing")

    def test_resuming_output_keeps_a_pending_message_held(self):
        self.factory.outcome = defer.Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\nNOOP\r\n")
        self.session.pauseProducing()
        self.session.resumeProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.clear()
        self.factory.outcome.callback(QUEUED)
        self.assertEqual(self.transport.value(), b"250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 OK\r\n")


def _fire(waiter, result):
    """Give C{waiter} (the first time) the result of what happened; pass it on."""
    if not waiter.called:
        waiter.callback(result)
    return result


class _Counter(Protocol):
    """Counts final reply lines cheaply (ScriptedClient keeps everything)."""

    def __init__(self):
        self.count = 0
        self._tail = b""
        self.waiting = None

    def dataReceived(self, data):
        data = self._tail + data
        self.count += data.count(b"\r\n214 ")
        self._tail = data[-5:]
        if self.waiting is not None and self.count >= self.waiting[0]:
            self.waiting[1].callback(None)
            self.waiting = None


class NonReadingClientTests(TestCase):
    """
    A client that pipelines commands and never reads the replies: the
    proxy's socket stops being read once its write buffer is full, so its
    memory stays bounded; when the client reads again every command is
    answered.
    """

    COMMANDS = 100000  # 12 MB of replies: more than loopback's socket buffers

    @defer.inlineCallbacks
    def test_proxy_stops_reading(self):
        stack = Stack(reactor, self.mktemp())
        self.addCleanup(stack.close)
        built = defer.Deferred()
        build = stack.factory.buildProtocol
        self.patch(stack.factory, "buildProtocol", lambda addr: _fire(built, build(addr)))
        counter = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", stack.port), _Counter())
        self.addCleanup(counter.transport.abortConnection)
        session = yield built
        counter.transport.pauseProducing()
        paused = defer.Deferred()
        pause = session.pauseProducing
        self.patch(session, "pauseProducing", lambda: _fire(paused, pause()))
        answered = itertools.count(1)
        help_ = session.smtp_HELP

        def counting_help(argument):
            if next(answered) == self.COMMANDS and not paused.called:
                paused.errback(self.failureException("the proxy read and answered every command"))
            help_(argument)

        self.patch(session, "smtp_HELP", counting_help)
        counter.transport.write(b"HELP\r\n" * self.COMMANDS)
        yield paused
        socket = session.transport.transport  # under the test server's connection tracker
        self.assertNotIn(socket, reactor.getReaders())
        done = defer.Deferred()
        counter.waiting = (self.COMMANDS, done)
        counter.transport.resumeProducing()
        yield done
        self.assertEqual(counter.count, self.COMMANDS)
