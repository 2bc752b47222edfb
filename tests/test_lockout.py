"""
Password guessing costs the guesser (issue 9): the failure table on its
own with a clock, then the lock-out across real connections.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Limits
from smtpproxy.lockout import FailureTable
from tests.support.client import ScriptedClient
from tests.support.mail import AUTH_OK, INVALID, plain
from tests.support.stack import Stack, by_password

LOCKED = "421 4.7.0 Too many authentication failures, try again later"


class FailureTableTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = FailureTable(3, 300, self.clock)

    def test_locks_at_the_maximum_once(self):
        self.assertEqual([self.table.failed("192.0.2.1") for _ in range(5)],
                         [False, False, True, False, False])
        self.assertTrue(self.table.locked("192.0.2.1"))
        self.assertFalse(self.table.locked("192.0.2.2"))

    def test_failures_are_forgotten_after_the_window(self):
        self.table.failed("192.0.2.1")
        self.table.failed("192.0.2.1")
        self.clock.advance(300)
        self.assertFalse(self.table.failed("192.0.2.1"))
        self.assertFalse(self.table.failed("192.0.2.1"))
        self.assertTrue(self.table.failed("192.0.2.1"))

    def test_lock_lasts_one_window_from_the_locking_failure(self):
        self.table.failed("192.0.2.1")
        self.clock.advance(299)
        self.table.failed("192.0.2.1")
        self.assertTrue(self.table.failed("192.0.2.1"))
        self.clock.advance(299)
        self.assertTrue(self.table.locked("192.0.2.1"))
        self.clock.advance(1)
        self.assertFalse(self.table.locked("192.0.2.1"))
        self.assertEqual(len(self.table), 0)

    def test_bounded_whatever_the_number_of_addresses(self):
        """At the cap the address whose last failure is oldest goes, its lock too."""
        table = FailureTable(1, 300, self.clock, capacity=100)
        table.failed("192.0.2.1")
        for n in range(10000):
            table.failed(f"10.{n >> 8}.{n & 255}.1")
        self.assertEqual(len(table), 100)
        self.assertFalse(table.locked("192.0.2.1"))
        self.assertTrue(table.locked("10.39.15.1"))


class LockoutTests(TestCase):
    """Three failures from one address within the window lock it out of every connection."""

    def setUp(self):
        # These clients come from loopback, which is exempt by default.
        limits = Limits(max_auth_failures=3, auth_failure_window=300, limit_exempt=())
        self.stack = Stack(reactor, self.mktemp(), limits, login_check=True)
        self.addCleanup(self.stack.close)
        self.stack.auth_api.answer = by_password
        self.clock = Clock()
        self.stack.factory.failures = FailureTable(3, 300, self.clock)

    @defer.inlineCallbacks
    def connect(self, source="127.0.0.1"):
        """A client from C{source}; fires with it and its first reply."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.stack.port,
                                      bindAddress=(source, 0))
        client = yield connectProtocol(endpoint, ScriptedClient())
        self.addCleanup(client.close)
        (first,) = yield client.replies(1)
        return client, first

    @defer.inlineCallbacks
    def session(self, source="127.0.0.1"):
        client, greeting = yield self.connect(source)
        self.assertEqual(greeting.code, 220)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(self.stack.client_tls)
        yield client.command(b"EHLO client.example", expect=250)
        return client

    @defer.inlineCallbacks
    def fail(self, client):
        return str((yield client.command(plain(password="guess"))))

    @defer.inlineCallbacks
    def test_lockout_across_connections_and_its_end(self):
        first, second, bystander = yield defer.gatherResults(
            [self.session(), self.session(), self.session()])
        with capturedLogs() as events:
            self.assertEqual([(yield self.fail(first)), (yield self.fail(first))],
                             [INVALID, INVALID])
            self.assertEqual((yield self.fail(second)), LOCKED)
            yield second.wait_closed()
            # Already connected, even the right password gets nowhere now,
            # and the API is not asked.
            self.assertEqual(str((yield bystander.command(plain()))), LOCKED)
            yield bystander.wait_closed()
            self.assertEqual((yield self.fail(first)), LOCKED)
            _, greeting = yield self.connect()
            self.assertEqual(str(greeting), LOCKED)
        self.assertEqual(len(self.stack.auth_api.requests), 3)  # none once locked
        lines = [formatEvent(e) for e in events]
        self.assertEqual([line for line in lines if "locking out" in line],
                         ["locking out 127.0.0.1 for 300 s after 3 failed logins"])
        self.assertNotIn("guess", " ".join(lines))
        metrics = self.stack.factory.metrics
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("smtpproxy_auth_lockouts_total"), 1)
        self.assertEqual(sample("smtpproxy_connections_refused_total", {"limit": "max_auth_failures"}), 1)
        self.assertEqual([sample("smtpproxy_logins_total", {"result": r}) for r in ("invalid", "locked_out")],
                         [2, 3])
        # Another address is not affected.
        other = yield self.session("127.0.0.2")
        self.assertEqual(str((yield other.command(plain()))), AUTH_OK)
        # The window passes: the address may log in again.
        self.clock.advance(300)
        again = yield self.session()
        self.assertEqual(str((yield again.command(plain()))), AUTH_OK)

    @defer.inlineCallbacks
    def test_success_does_not_reset_the_count(self):
        """A guesser cannot clear its count by logging in to an account it owns."""
        client = yield self.session()
        for expected in (INVALID, INVALID):
            self.assertEqual((yield self.fail(client)), expected)
        client = yield self.session()
        self.assertEqual(str((yield client.command(plain()))), AUTH_OK)
        client = yield self.session()
        self.assertEqual((yield self.fail(client)), LOCKED)


class ExemptTests(TestCase):
    """Loopback is exempt by default: its failures are 535, never a lock-out."""

    @defer.inlineCallbacks
    def test_loopback_is_not_locked_out(self):
        stack = Stack(reactor, self.mktemp(), Limits(max_auth_failures=2), login_check=True)
        self.addCleanup(stack.close)
        stack.auth_api.answer = by_password
        client = yield stack.session(login=False)
        self.addCleanup(client.close)
        replies = []
        for _ in range(5):
            replies.append(str((yield client.command(plain(password="guess")))))
        self.assertEqual(replies, [INVALID] * 5)
        self.assertEqual(str((yield client.command(plain()))), AUTH_OK)
        self.assertEqual(len(stack.factory.failures), 0)
