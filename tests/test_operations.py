"""
End to end over loopback for the operator's extras: implicit-TLS
submission (RFC 8314) and the Prometheus metrics page.
"""


import treq
from twisted.internet import defer, reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from tests.support.client import connect, submit
from tests.support.loopback import listen_loopback
from tests.support.stack import Stack
from tests.support.mail import AUTH_PLAIN, MESSAGE
from smtpproxy import replies
from smtpproxy.answer import Decision
from smtpproxy.outcome import OUTCOMES, outcome, verdict
from smtpproxy.tap import _quiet_site


class OperationsTestCase(TestCase):
    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)


class ImplicitTLSTests(OperationsTestCase):
    @defer.inlineCallbacks
    def test_submission_over_implicit_tls(self):
        """TLS from the first byte: no STARTTLS offered, AUTH offered, mail delivered."""
        implicit = TLSMemoryBIOFactory(self.stack.config.tls, False, self.stack.factory)
        server = listen_loopback(reactor, implicit)
        self.addCleanup(server.close)
        client = yield connect(reactor, server.port, tls=self.stack.client_tls)
        ehlo = yield client.command(b"EHLO client.example", expect=250)
        self.assertIn("AUTH PLAIN LOGIN", ehlo.lines)
        self.assertNotIn("STARTTLS", ehlo.lines)
        yield client.command(b"STARTTLS", expect=503)
        yield client.command(AUTH_PLAIN, expect=235)
        reply = yield submit(client, b"alice@example.com", b"bob@example.net", MESSAGE)
        yield client.close()
        self.assertEqual(reply.code, 250)
        self.assertEqual(len(self.stack.upstream.messages), 1)


class MetricsTests(OperationsTestCase):
    @defer.inlineCallbacks
    def scrape(self):
        server = listen_loopback(reactor, _quiet_site(self.stack.factory.metrics.resource()))
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(server.close)
        response = yield treq.get(f"http://127.0.0.1:{server.port}/metrics", pool=pool)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        body = yield response.text()
        yield server.close()
        return body

    @defer.inlineCallbacks
    def test_counts_messages_and_connections(self):
        yield self.stack.send(MESSAGE)
        self.stack.api.answer = lambda request: {"allow": False, "reason": "no"}
        yield self.stack.send(MESSAGE)
        body = yield self.scrape()
        self.assertIn('smtpproxy_messages_total{outcome="delivered"} 1.0', body)
        self.assertIn('smtpproxy_messages_total{outcome="denied"} 1.0', body)
        self.assertIn('smtpproxy_messages_total{outcome="temp_failed"} 0.0', body)
        self.assertIn("smtpproxy_connections_total 2.0", body)
        self.assertIn("smtpproxy_api_latency_seconds_count 2.0", body)
        self.assertIn("smtpproxy_upstream_latency_seconds_count 1.0", body)
        self.assertIn("smtpproxy_message_size_bytes_count 2.0", body)

    @defer.inlineCallbacks
    def test_unknown_path(self):
        server = listen_loopback(reactor, _quiet_site(self.stack.factory.metrics.resource()))
        self.addCleanup(server.close)
        response = yield treq.get(f"http://127.0.0.1:{server.port}/other",
                                  pool=HTTPConnectionPool(reactor, persistent=False))
        yield response.content()
        self.assertEqual(response.code, 404)


class OutcomeTests(SynchronousTestCase):
    """One function names every message's outcome, for the metric and the log line."""

    def test_each_outcome(self):
        cases = [
            ((replies.Reply(250, "2.0.0 Ok: queued"),), "delivered"),
            ((replies.Reply(550, "5.7.1 not you"), "deny"), "denied"),
            ((replies.Reply(450, "4.7.1 later"), "deny"), "denied"),
            ((replies.MESSAGE_TOO_BIG, "deny"), "denied"),
            ((replies.POLICY_UNAVAILABLE, "unavailable"), "temp_failed"),
            ((replies.Reply(554, "5.7.1 rejected"), "allow"), "refused_upstream"),
            ((replies.POLICY_UNAVAILABLE,), "temp_failed"),
            ((replies.Reply(554, "5.7.1 rejected"),), "refused_upstream"),
            ((replies.MESSAGE_TOO_BIG,), "refused_limit"),
            ((replies.BARE_LINE_END,), "invalid"),
            ((None,), "aborted"),
        ]
        for arguments, expected in cases:
            self.assertEqual(outcome(*arguments), expected, arguments)
        self.assertEqual(set(OUTCOMES), {expected for _, expected in cases})

    def test_each_verdict(self):
        """The API's word on a message, as the log line's policy= shows it."""
        cases = [
            (Decision(), "allow"),
            (Decision(reply=replies.Reply(550, "5.7.1 not you")), "deny"),
            (Decision(reply=replies.Reply(450, "4.7.1 later")), "deny"),
            (Decision.unavailable("timeout"), "unavailable"),
        ]
        for decision, expected in cases:
            self.assertEqual(verdict(decision), expected, decision)
