"""
Tests for L{smtpproxy.policy}: in memory with StubTreq and a Clock, then
against a real twisted.web server on loopback, over HTTP and HTTPS.
"""

import json
import shutil
import tempfile

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from smtpproxy.config import Policy
from smtpproxy.policy import MAX_ANSWER, PolicyClient
from smtpproxy.replies import POLICY_UNAVAILABLE, Reply
from smtpproxy.tls import TLSFilesError
from tests.support.certs import make_certificates, server_options
from tests.support.api import ALLOW, REQUEST, ApiResource
from tests.support.loopback import listen_loopback

class PolicyTestMixin:
    """Helpers shared by the in-memory and the loopback tests."""

    def setUp(self):
        self.events = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def warnings(self):
        ours = [event for event in self.events if event.get("log_namespace") == "smtpproxy.policy"]
        return [formatEvent(event) for event in ours if event["log_level"] == LogLevel.warn]

    def assertSent(self, api):
        """The API got one POST of exactly L{REQUEST} as UTF-8 JSON."""
        [seen] = api.seen
        self.assertEqual((seen.method, seen.content_type), (b"POST", [b"application/json"]))
        self.assertEqual(json.loads(seen.body), REQUEST)
        self.assertIn("héllo \ufffd".encode("utf-8"), seen.body)

    def assertAllowed(self, decision):
        self.assertTrue(decision.allowed)
        self.assertEqual(decision.headers, (("X-Checked", "yes"),))
        self.assertEqual(decision.sender, "b@example.org")
        self.assertEqual(self.warnings(), [])

    def assertUnavailable(self, decision, cause):
        """451 4.3.0, and one warning naming C{cause} but not the password."""
        self.assertEqual(decision.reply, POLICY_UNAVAILABLE)
        [warning] = self.warnings()
        self.assertIn(cause, warning)
        self.assertNotIn(REQUEST["password"], repr(self.events))

    def listen(self, api, tls=None):
        """Serve C{api} on loopback (over TLS with C{tls} options); return its URL and server."""
        site = Site(api)
        factory = site if tls is None else TLSMemoryBIOFactory(tls, False, site)
        server = listen_loopback(reactor, factory)
        self.addCleanup(server.close)
        scheme = "http" if tls is None else "https"
        return f"{scheme}://127.0.0.1:{server.port}/check", server

    def client(self, url, **policy):
        """A real client (own pool and Agent), closed after the test."""
        client = PolicyClient(reactor, Policy(url, timeout=10, **policy))
        self.addCleanup(client.close)
        return client


class StubTests(PolicyTestMixin, TestCase):
    """The client in memory: StubTreq for the API, a Clock for the deadline."""

    def check(self, api, request=REQUEST):
        self.clock = Clock()
        self.stub = StubTreq(api)
        policy = Policy("http://api.example/check", timeout=5)
        return PolicyClient(self.clock, policy, http=self.stub).check(request)

    def test_allow(self):
        api = ApiResource()
        self.assertAllowed(self.successResultOf(self.check(api)))
        self.assertSent(api)
        self.assertEqual(api.seen[0].path, b"/check")

    def test_refusal(self):
        d = self.check(ApiResource(body=b'{"allow": false, "reason": "no"}'))
        decision = self.successResultOf(d)
        self.assertEqual(decision.reply, Reply(550, "5.7.1 no"))
        self.assertEqual(self.warnings(), [])

    def test_bad_status(self):
        d = self.check(ApiResource(code=503))
        self.assertUnavailable(self.successResultOf(d), "HTTP status 503")

    def test_not_json(self):
        d = self.check(ApiResource(body=b"<html>"))
        self.assertUnavailable(self.successResultOf(d), "not JSON")

    def test_malformed(self):
        d = self.check(ApiResource(body=b'{"allow": true, "headers": [{"name": "Bcc:"}]}'))
        self.assertUnavailable(self.successResultOf(d), "headers[0]: 'name'")

    def test_answer_too_large(self):
        """The body is read only up to MAX_ANSWER bytes."""
        d = self.check(ApiResource(body=b" " * MAX_ANSWER + ALLOW))
        self.assertUnavailable(self.successResultOf(d), "AnswerTooLarge")

    def test_largest_answer(self):
        d = self.check(ApiResource(body=ALLOW + b" " * (MAX_ANSWER - len(ALLOW))))
        self.assertAllowed(self.successResultOf(d))

    def test_unencodable_request(self):
        """Even a request that cannot be sent ends as a decision, not an error."""
        d = self.check(ApiResource(), dict(REQUEST, helo="\udcff"))
        self.assertUnavailable(self.successResultOf(d), "UnicodeEncodeError")

    def test_timeout(self):
        """One deadline covers the whole exchange; nothing is left scheduled after it."""
        d = self.check(ApiResource(body=None))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertUnavailable(self.successResultOf(d), "no answer within 5 seconds")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_reading_body(self):
        """
        The deadline still runs once the response headers are in, and
        closes the connection: a slow API cannot keep it.
        """
        api = ApiResource(body=None)
        d = self.check(api)
        request = self.successResultOf(api.arrived)
        request.write(b'{"allow": ')
        self.stub.flush()
        self.clock.advance(5)
        self.assertUnavailable(self.successResultOf(d), "no answer within 5 seconds")
        finished = request.notifyFinish()
        self.stub.flush()
        self.failureResultOf(finished, ConnectionDone)

    def test_cancel(self):
        """The caller cancels (the client hung up): CancelledError, no warning, no timer left."""
        d = self.check(ApiResource(body=None))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_after_decision(self):
        d = self.check(ApiResource())
        d.cancel()
        self.assertAllowed(self.successResultOf(d))


class LoopbackTests(PolicyTestMixin, TestCase):
    """The client over real sockets, with its own pool and Agent."""

    @inlineCallbacks
    def test_allow(self):
        api = ApiResource()
        url, _ = self.listen(api)
        self.assertAllowed((yield self.client(url).check(REQUEST)))
        self.assertSent(api)

    @inlineCallbacks
    def test_persistent(self):
        """Two messages, one connection: the pool keeps it open."""
        url, server = self.listen(ApiResource())
        client = self.client(url)
        yield client.check(REQUEST)
        yield client.check(REQUEST)
        self.assertEqual(server.connections, 1)

    @inlineCallbacks
    def test_concurrent_calls_keep_their_connections(self):
        """Ten calls at once, then ten more: the second ten reuse the first ten's connections."""
        url, server = self.listen(ApiResource())
        client = self.client(url)
        for _ in range(2):
            yield gatherResults([client.check(REQUEST) for _ in range(10)])
        self.assertEqual(server.connections, 10)

    @inlineCallbacks
    def test_new_connections_are_not_logged(self):
        """Twisted's "Starting factory" line for every new API connection says nothing: none."""
        url, server = self.listen(ApiResource())
        del self.events[:]
        client = self.client(url)
        yield gatherResults([client.check(REQUEST) for _ in range(3)])
        yield client.close()
        yield server.wait_idle()
        self.assertEqual(server.connections, 3)
        self.assertEqual([formatEvent(e) for e in self.events if "factory" in formatEvent(e)], [])

    @inlineCallbacks
    def test_refused(self):
        url, server = self.listen(ApiResource())
        yield server.close()
        self.assertUnavailable((yield self.client(url).check(REQUEST)), "ConnectionRefusedError")

    @inlineCallbacks
    def test_server_error(self):
        url, _ = self.listen(ApiResource(code=500, body=b'{"allow": true}'))
        self.assertUnavailable((yield self.client(url).check(REQUEST)), "HTTP status 500")

    @inlineCallbacks
    def test_redirect_not_followed(self):
        api = ApiResource(code=307, body=b"", headers=[(b"location", b"/elsewhere")])
        url, _ = self.listen(api)
        self.assertUnavailable((yield self.client(url).check(REQUEST)), "HTTP status 307")
        self.assertEqual(len(api.seen), 1)

    @inlineCallbacks
    def test_cancel(self):
        """Cancelling closes the connection: the API sees the client go."""
        api = ApiResource(body=None)
        url, server = self.listen(api)
        d = self.client(url).check(REQUEST)
        yield api.arrived
        d.cancel()
        yield server.wait_idle()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.warnings(), [])


class HttpsTests(PolicyTestMixin, TestCase):
    """The API's certificate is verified, against C{ca_path} when given."""

    def setUp(self):
        super().setUp()
        self.certs = self.certificates()
        self.url, _ = self.listen(ApiResource(), server_options(self.certs))

    def directory(self):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        return path

    def certificates(self):
        """A fresh CA and server certificate, unrelated to any other."""
        return make_certificates(self.directory())

    def ca_file(self, *certs):
        """A bundle of the CAs of C{certs}."""
        path = f"{self.directory()}/bundle.pem"
        with open(path, "wb") as f:
            for c in certs:
                with open(c.ca_path, "rb") as ca:
                    f.write(ca.read())
        return path

    def check(self, ca_path):
        return self.client(self.url, ca_path=ca_path).check(REQUEST)

    @inlineCallbacks
    def test_trusted(self):
        self.assertAllowed((yield self.check(self.certs.ca_path)))

    @inlineCallbacks
    def test_trusted_in_bundle(self):
        """Every certificate of a CA file counts, not only the first."""
        self.assertAllowed((yield self.check(self.ca_file(self.certificates(), self.certs))))

    @inlineCallbacks
    def test_platform_trust(self):
        """The test CA is not in the platform's store."""
        self.assertUnavailable((yield self.check(None)), "certificate verify failed")

    @inlineCallbacks
    def test_other_ca(self):
        decision = yield self.check(self.certificates().ca_path)
        self.assertUnavailable(decision, "certificate verify failed")

    def test_no_certificate_in_ca_file(self):
        """A broken --api_ca stops the proxy at start-up rather than failing every message."""
        path = self.certs.key_path
        self.assertRaises(TLSFilesError, PolicyClient, reactor, Policy(self.url, ca_path=path))
