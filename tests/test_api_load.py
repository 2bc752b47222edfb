"""
The policy API path under keep-alive races and overload (issue 10): idle connections are
closed before the API's own keep-alive timeout, a POST that failed on a reused connection
before any byte of answer is sent once more, requests at once are capped with a bounded
queue, and what the proxy gave up on is cancelled, closing its connection.  Against real
HTTP servers on loopback.
"""

import json
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from smtpproxy.config import Policy
from smtpproxy.policy import PolicyClient
from smtpproxy.replies import POLICY_UNAVAILABLE
from tests.support.api import ALLOW, REQUEST, ApiResource, start_api
from tests.support.loopback import listen_loopback

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


class _OneRequestPerConnection(Protocol):
    """
    An API that answers the first request on a connection and keeps it open, then closes
    the connection when the next request arrives, without reading it: what a keep-alive
    timeout does when it fires as a request crosses it.  With C{partial}, it sends the
    status line of its answer first (the API has then seen the request); with
    C{answering} false, it closes at the first request too.
    """

    def connectionMade(self):
        self._buffer = b""
        self._answered = False

    def dataReceived(self, data):
        self._buffer += data
        head, separator, body = self._buffer.partition(b"\r\n\r\n")
        if not separator:
            return
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(body) < length:
            return
        self._buffer = b""
        if self._answered or not self.factory.answering:
            self.factory.closed += 1
            if self.factory.partial:
                self.transport.write(b"HTTP/1.1 200 OK\r\n")
            self.transport.loseConnection()
            return
        self._answered = True
        self.factory.answered += 1
        self.transport.write(RESPONSE % (len(ALLOW), ALLOW))


class _Api(Factory):
    protocol = _OneRequestPerConnection
    noisy = False

    def __init__(self, partial=False, answering=True):
        self.partial = partial
        self.answering = answering
        self.answered = self.closed = 0


class KeepAliveTests(TestCase):
    def client(self, url, **policy):
        client = PolicyClient(reactor, Policy(url, timeout=5, **policy))
        self.addCleanup(client.close)
        return client

    def serve(self, factory):
        server = listen_loopback(reactor, factory)
        self.addCleanup(server.close)
        return f"http://127.0.0.1:{server.port}/check", server

    @defer.inlineCallbacks
    def test_post_closed_under_it_on_a_reused_connection_is_sent_once_more(self):
        api = _Api()
        url, _ = self.serve(api)
        client = self.client(url)
        decisions = []
        for _ in range(20):
            decisions.append((yield client.check(REQUEST)))
        self.assertEqual([d.allowed for d in decisions], [True] * 20)
        self.assertEqual((api.answered, api.closed), (20, 19))

    @defer.inlineCallbacks
    def test_no_retry_once_the_answer_began(self):
        """A byte of answer: the API has the request, so it is never sent twice."""
        api = _Api(partial=True)
        url, _ = self.serve(api)
        client = self.client(url)
        first = yield client.check(REQUEST)
        second = yield client.check(REQUEST)
        self.assertTrue(first.allowed)
        self.assertEqual(second.reply, POLICY_UNAVAILABLE)
        self.assertEqual((api.answered, api.closed), (1, 1))

    @defer.inlineCallbacks
    def test_no_retry_on_a_new_connection(self):
        """Closed before any answer on a connection of its own: the API may have it; no resend."""
        api = _Api(answering=False)
        url, _ = self.serve(api)
        decision = yield self.client(url).check(REQUEST)
        self.assertEqual(decision.reply, POLICY_UNAVAILABLE)
        self.assertEqual((api.answered, api.closed), (0, 1))

    @defer.inlineCallbacks
    def test_idle_connection_is_closed_by_the_proxy(self):
        """The API would keep it 12 hours; the proxy closes it after --api_idle_timeout."""
        resource = ApiResource()
        url, server = self.serve(Site(resource))
        client = self.client(url, idle_timeout=0.05)
        decision = yield client.check(REQUEST)
        self.assertTrue(decision.allowed)
        yield server.wait_idle()
        self.assertEqual(server.connections, 1)

    @defer.inlineCallbacks
    def test_bursts_against_an_api_closing_idle_connections_quickly(self):
        """
        A real twisted.web API that closes connections idle for 0.2 s, and bursts of
        messages 0.2 s apart, so some requests meet a connection as it closes: none fails.
        """
        site = Site(ApiResource(), timeout=0.2)
        url, server = self.serve(site)
        client = self.client(url, idle_timeout=5)
        decisions = []
        for _ in range(5):
            decisions += yield defer.gatherResults([client.check(REQUEST) for _ in range(20)])
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([d.allowed for d in decisions], [True] * 100)


class OverloadTests(TestCase):
    """An API that never answers: bounded connections, timely 451s, abandoned requests closed."""

    def setUp(self):
        self.held = []
        self._arrival = None
        self.api = start_api(reactor, self.hold)
        self.addCleanup(self.api.close)

    def hold(self, request):
        held = defer.Deferred()
        self.held.append(held)
        arrival, self._arrival = self._arrival, None
        if arrival is not None:
            arrival.callback(held)
        return held

    def request(self, n):
        """A Deferred firing with the answer Deferred of the API's C{n}th request (from 0)."""
        if len(self.held) > n:
            return defer.succeed(self.held[n])
        self._arrival = defer.Deferred()
        return self._arrival

    @defer.inlineCallbacks
    def test_capped_queued_then_timely_451_and_cancelled(self):
        timeout = 0.5
        client = PolicyClient(reactor, Policy(self.api.url, timeout=timeout, connections=2,
                                              queue=3))
        self.addCleanup(client.close)
        started = time.monotonic()
        checks = [client.check(REQUEST) for _ in range(8)]
        refused = [c for c in checks if c.called]
        self.assertEqual(len(refused), 3)
        self.assertEqual({self.successResultOf(c).reply for c in refused}, {POLICY_UNAVAILABLE})
        decisions = yield defer.gatherResults(checks[:5])
        elapsed = time.monotonic() - started
        self.assertEqual({d.reply for d in decisions}, {POLICY_UNAVAILABLE})
        self.assertGreaterEqual(elapsed, timeout)
        self.assertLess(elapsed, timeout + 0.5)
        self.assertEqual(len(self.api.requests), 2)
        yield self.api.wait_idle()
        self.assertEqual([held.called for held in self.held], [True, True])

    @defer.inlineCallbacks
    def test_queued_request_goes_when_a_connection_frees(self):
        client = PolicyClient(reactor, Policy(self.api.url, timeout=5, connections=1, queue=1))
        self.addCleanup(client.close)
        first, second = client.check(REQUEST), client.check(REQUEST)
        (yield self.request(0)).callback(json.loads(ALLOW))
        self.assertTrue((yield first).allowed)
        self.assertEqual(len(self.api.requests), 1)
        (yield self.request(1)).callback(json.loads(ALLOW))
        self.assertTrue((yield second).allowed)
