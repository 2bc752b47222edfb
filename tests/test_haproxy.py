"""
The PROXY protocol behind a load balancer: the real client address reaches
the connection limits, the logs and the policy API's C{client_address}.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from smtpproxy import Limits
from smtpproxy.haproxy import _HeaderFirstFactory
from tests.support.client import connect, submit
from tests.support.loopback import listen_loopback
from tests.support.stack import Stack
from tests.support.mail import AUTH_PLAIN, MESSAGE

HEADER = b"PROXY TCP4 %s 127.0.0.1 40000 587\r\n"


class ProxyProtocolTests(TestCase):
    def setUp(self):
        limits = Limits(max_connections_per_ip=1, limit_exempt="198.51.100.0/28")
        self.stack = Stack(reactor, self.mktemp(), limits)
        self.addCleanup(self.stack.close)
        self.server = listen_loopback(reactor, _HeaderFirstFactory(self.stack.factory, reactor, 30))
        self.addCleanup(self.server.close)

    @defer.inlineCallbacks
    def connect(self, address):
        """A client behind the balancer at C{address}; fires with it after the greeting."""
        client = yield connect(reactor, self.server.port, wait_for_greeting=False)
        client.send(HEADER % address)
        (client.greeting,) = yield client.replies(1)
        return client

    @defer.inlineCallbacks
    def test_client_address_reaches_the_api(self):
        """STARTTLS and AUTH work through the wrapper; the API sees the real client."""
        client = yield self.connect(b"192.0.2.7")
        self.assertEqual(client.greeting.code, 220)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(self.stack.client_tls)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.command(AUTH_PLAIN, expect=235)
        reply = yield submit(client, b"alice@example.com", b"bob@example.net", MESSAGE)
        yield client.close()
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.stack.api.requests[0].json["client_address"], "192.0.2.7")

    @defer.inlineCallbacks
    def test_limit_counts_real_clients(self):
        """With one connection per address: two clients pass, the same one twice does not."""
        first = yield self.connect(b"192.0.2.7")
        second = yield self.connect(b"192.0.2.8")
        again = yield self.connect(b"192.0.2.7")
        self.assertEqual([c.greeting.code for c in (first, second, again)], [220, 220, 421])
        yield defer.gatherResults([c.close() for c in (first, second, again)])

    @defer.inlineCallbacks
    def test_exemption_follows_the_header(self):
        """
        Whether a client is exempt (--limit_exempt) is decided by the
        header's address too: the balancer's own (127.0.0.1, exempt by
        default) does not count here.
        """
        clients = []
        for address in (b"198.51.100.7", b"198.51.100.7", b"198.51.100.7",
                        b"198.51.100.20", b"198.51.100.20"):
            clients.append((yield self.connect(address)))
        self.assertEqual([c.greeting.code for c in clients], [220, 220, 220, 220, 421])
        yield defer.gatherResults([c.close() for c in clients])

    @defer.inlineCallbacks
    def test_nothing_before_the_header(self):
        """No greeting until the header names the client; a bad header closes."""
        client = yield connect(reactor, self.server.port, wait_for_greeting=False)
        client.send(b"EHLO not-a-proxy-header\r\n")
        yield client.wait_closed()
        self.assertEqual(client.received, b"")
        self.assertEqual(self.stack.factory.metrics.registry.get_sample_value("smtpproxy_connections_total"), 0)

    @defer.inlineCallbacks
    def test_no_header_times_out(self):
        """A connection that never sends the header is dropped (it holds no session yet)."""
        quick = listen_loopback(reactor, _HeaderFirstFactory(self.stack.factory, reactor, 0.05))
        self.addCleanup(quick.close)
        client = yield connect(reactor, quick.port, wait_for_greeting=False)
        yield client.wait_closed()
        self.assertEqual(client.received, b"")
