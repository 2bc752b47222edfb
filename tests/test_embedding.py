"""
Tests for L{smtpproxy.proxy}: the proxy embedded in an application with
L{smtpproxy.Proxy}, as README.rst shows it, on loopback with real TLS, a
real HTTP API and a real SMTP upstream.
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Policy, Proxy, ProxyConfig, Upstream
from tests.support.api import start_api
from tests.support.certs import client_options, make_certificates, server_options
from tests.support.client import connect, send_mail
from tests.support.loopback import listen_loopback
from tests.support.mail import MESSAGE
from tests.support.stack import PASSWORD, USER, allow
from tests.support.upstream import END_OF_DATA, start_upstream


def _config(api_url, upstream_port, certs):
    return ProxyConfig(
        # Idle API and upstream connections are kept far longer than the
        # test runs: only close() lets go of them.
        policy=Policy(url=api_url, timeout=5, idle_timeout=300),
        upstream=Upstream(host="127.0.0.1", port=upstream_port, timeout=5, pool_timeout=300),
        tls=server_options(certs),
        hostname="proxy.test",
    )


class EmbeddingTests(TestCase):
    timeout = 30

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        certs = make_certificates(directory)
        self.client_tls = client_options(certs)
        self.api = start_api(reactor, allow)
        self.addCleanup(self.api.close)
        self.upstream = start_upstream(reactor)
        self.addCleanup(self.upstream.close)
        self.config = _config(self.api.url, self.upstream.port, certs)

    @defer.inlineCallbacks
    def test_listen_deliver_drain_close(self):
        """
        A message in flight when the drain starts is delivered and its
        client hears the upstream's 250; nobody new gets in; close then lets
        go of the connections kept to the policy API and the upstream.
        """
        proxy = Proxy(self.config, reactor, listen=["127.0.0.1:0"])
        (port,) = yield proxy.listen()
        number = port.getHost().port
        reached = self.upstream.stall(END_OF_DATA)
        sent = send_mail(reactor, number, self.client_tls, USER, PASSWORD,
                         "alice@example.com", ["bob@example.net"], MESSAGE)
        yield reached

        drained = proxy.drain(30)
        self.assertNoResult(drained)
        self.upstream.release()
        final = yield sent
        self.assertEqual(final.code, 250)
        yield drained
        self.assertEqual([m.sender for m in self.upstream.messages], ["alice@example.com"])
        yield self.assertFailure(connect(reactor, number), ConnectionRefusedError)

        self.assertEqual(len(self.api.requests), 1)
        yield proxy.close()
        yield defer.gatherResults([self.api.wait_idle(), self.upstream.wait_idle()])

    @defer.inlineCallbacks
    def test_implicit_tls_listener(self):
        """C{listen_tls} addresses speak TLS from the first byte (port 465 style)."""
        proxy = Proxy(self.config, reactor, listen_tls=["127.0.0.1:0"])
        (port,) = yield proxy.listen()
        client = yield connect(reactor, port.getHost().port, tls=self.client_tls)
        self.assertEqual(client.greeting.code, 220)
        yield client.command(b"QUIT", expect=221)
        yield client.wait_closed()
        yield proxy.drain(30)
        yield proxy.close()

    @defer.inlineCallbacks
    def test_listen_failure_closes_the_other_ports(self):
        """One address that cannot listen: the Deferred fails and nothing is left listening."""
        taken = listen_loopback(reactor, Factory.forProtocol(Protocol))
        self.addCleanup(taken.close)
        proxy = Proxy(self.config, reactor, listen=["127.0.0.1:0", f"127.0.0.1:{taken.port}"])
        yield self.assertFailure(proxy.listen(), CannotListenError)
        self.assertEqual(proxy.ports, [])
        yield proxy.close()


class _Port:
    """A listening port whose stop takes a while."""

    def __init__(self):
        self.stopped = defer.Deferred()

    def stopListening(self):
        return self.stopped


class OrderTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        config = _config("http://127.0.0.1:1/", 25, make_certificates(directory))
        self.proxy = Proxy(config, MemoryReactorClock())

    def test_drain_stops_listening_first(self):
        port = _Port()
        self.proxy.serving(port, None)
        drained = self.proxy.drain(30)
        self.assertFalse(self.proxy.factory.draining)
        port.stopped.callback(None)
        self.assertTrue(self.proxy.factory.draining)
        self.successResultOf(drained)
        self.assertEqual(self.proxy.ports, [])
        self.successResultOf(self.proxy.close())

    def test_close_stops_listening_too(self):
        port = _Port()
        self.proxy.serving(port, None)
        closed = self.proxy.close()
        self.assertNoResult(closed)
        port.stopped.callback(None)
        self.successResultOf(closed)
