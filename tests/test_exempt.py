"""
Trusted addresses (C{--limit_exempt}, issue 9): no per-address limit
applies to them, as Postfix exempts C{$mynetworks}.
"""

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Limits, replies
from smtpproxy.connections import ConnectionTable
from smtpproxy.metrics import Metrics
from tests.support.client import ScriptedClient
from tests.support.stack import Stack


class ExemptTableTests(SynchronousTestCase):
    def setUp(self):
        limits = Limits(max_connections=5, max_connections_per_ip=1,
                        limit_exempt="192.0.2.0/24,2001:db8::/32")
        self.table = ConnectionTable(limits, Clock(), Metrics())

    def test_exempt_addresses_count_in_all_only(self):
        for address in ("192.0.2.1", "192.0.2.1", "2001:db8::1", "2001:db8::1"):
            self.assertIsNone(self.table.admit(address))
        self.assertEqual((self.table.total, self.table.addresses), (4, 0))
        self.assertIsNone(self.table.admit("198.51.100.1"))
        self.assertEqual(self.table.admit("192.0.2.1"), replies.TOO_MANY_CONNECTIONS)
        self.table.release("192.0.2.1")
        self.table.release("198.51.100.1")
        self.assertEqual((self.table.total, self.table.addresses), (3, 0))

    def test_others_are_limited(self):
        self.assertIsNone(self.table.admit("198.51.100.1"))
        self.assertEqual(self.table.admit("198.51.100.1"), replies.TOO_MANY_CONNECTIONS)
        self.assertEqual(self.table.admit("/run/smtpproxy.sock"), None)
        self.assertEqual(self.table.admit("/run/smtpproxy.sock"), replies.TOO_MANY_CONNECTIONS)


class LoopbackConnectionsTests(TestCase):
    """An application next door with more connections than the per-address limit."""

    COUNT = 60

    @defer.inlineCallbacks
    def greetings(self, limits):
        stack = Stack(reactor, self.mktemp(), limits)
        self.addCleanup(stack.close)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", stack.port)
        clients = yield defer.gatherResults(
            [connectProtocol(endpoint, ScriptedClient()) for _ in range(self.COUNT)])
        for client in clients:
            self.addCleanup(client.close)
        firsts = yield defer.gatherResults([client.replies(1) for client in clients])
        return sorted(first.code for (first,) in firsts)

    @defer.inlineCallbacks
    def test_loopback_is_exempt_by_default(self):
        codes = yield self.greetings(Limits(max_connections_per_ip=50))
        self.assertEqual(codes, [220] * self.COUNT)

    @defer.inlineCallbacks
    def test_narrowed_exemption_leaves_the_limit(self):
        codes = yield self.greetings(Limits(max_connections_per_ip=50,
                                            limit_exempt="127.0.0.2/32"))
        self.assertEqual(codes, [220] * 50 + [421] * (self.COUNT - 50))
