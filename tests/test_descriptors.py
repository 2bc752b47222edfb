"""
Tests for L{smtpproxy.descriptors}: the open-file limit raised and checked
at start, and a full descriptor table answered with C{421} while the
metrics port keeps serving, against the real twistd under a low limit;
and for L{smtpproxy.memory}, which gives freed memory back.
"""

import errno
import socket
from types import SimpleNamespace

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectBindError, ConnectionRefusedError, ProcessDone
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from smtpproxy import Policy, Upstream, descriptors, memory, replies
from smtpproxy.policy import PolicyClient
from smtpproxy.upstream import unavailable
from tests.support.twistd import free_port, spawn_proxy, twistd_parts


class _Limits:
    """A stand-in for the C{resource} module with a settable limit."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, settable=True):
        self.limit = (soft, hard)
        self.settable = settable

    def getrlimit(self, which):
        return self.limit

    def setrlimit(self, which, limit):
        if not self.settable:
            raise ValueError("not allowed")
        self.limit = limit


class RaiseLimitTests(SynchronousTestCase):
    def use(self, limits):
        self.patch(descriptors, "resource", limits)
        return limits

    def test_soft_raised_to_hard(self):
        limits = self.use(_Limits(1024, 1048576))
        self.assertIsNone(descriptors.raise_limit(1000))
        self.assertEqual(limits.limit, (1048576, 1048576))

    def test_warning_when_hard_is_too_low(self):
        limits = self.use(_Limits(256, 1024))
        warning = descriptors.raise_limit(1000)
        self.assertEqual(limits.limit, (1024, 1024))
        self.assertIn("open-file limit 1024 cannot carry --max_connections=1000", warning)

    def test_unlimited_hard(self):
        limits = self.use(_Limits(1024, _Limits.RLIM_INFINITY))
        self.assertIsNone(descriptors.raise_limit(1000))
        self.assertEqual(limits.limit[0], 1000 * descriptors.PER_SESSION + descriptors.SPARE)

    def test_not_raisable(self):
        self.use(_Limits(256, 4096, settable=False))
        self.assertIn("open-file limit 256", descriptors.raise_limit(1000))


class _FullOnce:
    """A listening socket whose next accept fails with EMFILE, as with a full table."""

    def __init__(self, real):
        self.real = real
        self.full = True

    def accept(self):
        if self.full:
            self.full = False
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()


class GuardTests(SynchronousTestCase):
    def setUp(self):
        self.listening = socket.socket()
        self.addCleanup(self.listening.close)
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(5)
        self.client = socket.create_connection(self.listening.getsockname())
        self.addCleanup(self.client.close)
        self.met = []
        self.port = SimpleNamespace(socket=_FullOnce(self.listening))

    def test_refused_on_the_reserve(self):
        descriptors.guard(self.port, self.met.append)
        error = self.assertRaises(BlockingIOError, self.port.socket.accept)
        self.assertEqual(error.errno, errno.EAGAIN)
        self.assertEqual(self.client.recv(200), descriptors.REFUSAL)
        self.assertEqual(self.met, ["127.0.0.1"])

    def test_served_on_the_reserve(self):
        descriptors.guard(self.port, self.met.append, refusal=None)
        connection, address = self.port.socket.accept()
        self.addCleanup(connection.close)
        connection.sendall(b"served")
        self.assertEqual(self.client.recv(10), b"served")
        self.assertEqual(self.met, ["127.0.0.1"])


class _Held(Protocol):
    """A client that keeps its connection; the first bytes it got are its answer."""

    answer = b""

    def connectionMade(self):
        self.factory.open.append(self)

    def dataReceived(self, data):
        if not self.answer:
            self.answer = data
            self.factory.heard()

    def connectionLost(self, reason):
        if not self.answer:
            self.factory.heard()
        self.factory.answers.append(self.answer)


class _Clients(ClientFactory):
    """C{count} clients; L{done} fires with their answers once all are closed."""

    protocol = _Held

    def __init__(self, count):
        self.answers = []
        self.open = []
        self.done = defer.Deferred()
        self.all_heard = defer.Deferred()
        self._count = self._unheard = count

    def heard(self):
        """A client got its first bytes, or its end."""
        self._unheard -= 1
        if self._unheard == 0:
            self.all_heard.callback(None)

    def close(self):
        for client in self.open:
            client.transport.loseConnection()

    def clientConnectionLost(self, connector, reason):
        self._ended()

    def clientConnectionFailed(self, connector, reason):
        self.answers.append(b"")
        self.heard()
        self._ended()

    def _ended(self):
        self._count -= 1
        if self._count == 0:
            self.done.callback(self.answers)


class LowLimitTests(TestCase):
    """The real twistd under C{ulimit -n 128}, met by more clients than it can hold."""

    timeout = 60

    @defer.inlineCallbacks
    def test_full_table_is_421_and_metrics_answer(self):
        port, metrics = free_port(), free_port()
        process, twistd = spawn_proxy(self, twistd_parts(self), port, f"--metrics=127.0.0.1:{metrics}",
                                      "--pretls_timeout=60", nofile=128)
        yield twistd.logged("SIGTERM drains")
        self.assertIn("open-file limit 128 cannot carry --max_connections=1000", twistd.log)
        held = _Clients(200)
        for _ in range(200):
            reactor.connectTCP("127.0.0.1", port, held)
        # The proxy holds every client it greeted; the rest meet a full table.
        yield twistd.logged("no file descriptor free")
        # The table is still full: the scrape is served on the metrics port's reserve.
        response = yield treq.get(f"http://127.0.0.1:{metrics}/metrics",
                                  pool=HTTPConnectionPool(reactor, persistent=False))
        body = yield response.text()
        self.assertIn('smtpproxy_connections_refused_total{limit="descriptors"}', body)
        yield held.all_heard
        held.close()
        answers = yield held.done
        process.signalProcess("TERM")
        greeted = [a for a in answers if a.startswith(b"220 ")]
        refused = [a for a in answers if a == descriptors.REFUSAL]
        self.assertTrue(greeted and refused, answers)
        self.assertEqual(len(greeted) + len(refused), 200, answers)
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        shortage = [line for line in twistd.log.splitlines() if "no file descriptor free" in line]
        self.assertLessEqual(len(shortage), 2, twistd.log)
        self.assertNotIn("Could not accept new connection", twistd.log)


class ConnectTests(SynchronousTestCase):
    """Connections to the API or the upstream that found no descriptor: summed up, not logged each."""

    def emfile(self):
        return Failure(ConnectBindError(errno.EMFILE, "Too many open files"))

    def test_recognised(self):
        self.assertTrue(descriptors.exhausted(self.emfile()))
        self.assertTrue(descriptors.exhausted(Failure(ResponseNeverReceived([self.emfile()]))))
        self.assertFalse(descriptors.exhausted(Failure(ConnectionRefusedError())))

    def test_upstream_failure_told_not_logged(self):
        told = []
        upstream = Upstream(host="127.0.0.1", port=25)
        with capturedLogs() as logged:
            reply = unavailable(self.emfile(), upstream, told.append)
        self.assertEqual((reply, told, logged), (replies.UPSTREAM_UNAVAILABLE, ["upstream 127.0.0.1:25"], []))

    def test_policy_failure_told_not_logged(self):
        client = PolicyClient(Clock(), Policy("http://api.example/"), http=_Failing(self.emfile()))
        told = []
        client.exhausted = told.append
        decisions = []
        with capturedLogs() as logged:
            client.check({}).addCallback(decisions.append)
        self.assertEqual(told, ["policy API"])
        self.assertEqual(decisions[0].reply, replies.POLICY_UNAVAILABLE)
        self.assertEqual(logged, [])


class _Failing:
    """A treq client whose every request fails with C{failure}."""

    def __init__(self, failure):
        self._failure = failure

    def post(self, *args, **kwargs):
        return defer.fail(self._failure)


class TrimTests(SynchronousTestCase):
    def test_trims_once_a_minute(self):
        clock = Clock()
        trim = memory.trimmer(clock)
        if trim is None:
            raise SkipTest("no malloc_trim in this C library")
        calls = []
        trim.f = lambda pad: calls.append(pad)
        trim.start(memory.TRIM_INTERVAL, now=False)
        clock.advance(memory.TRIM_INTERVAL)
        clock.advance(memory.TRIM_INTERVAL)
        trim.stop()
        self.assertEqual(calls, [0, 0])
