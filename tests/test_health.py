"""
Health and readiness (L{smtpproxy.health}) on the real twistd's metrics
listener: ready once the upstream and the API answered, not ready with the
reason while the API is down and while the proxy drains, which the
listener stays up for.
"""


import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from smtpproxy.health import Readiness
from tests.support.certs import client_options
from tests.support.client import connect
from tests.support.mail import AUTH_PLAIN
from tests.support.twistd import free_port, spawn_proxy, twistd_parts


class ReadinessTests(SynchronousTestCase):
    def test_reasons(self):
        results = {"upstream": defer.succeed(None), "policy API": defer.fail(OSError("refused"))}
        draining = []
        readiness = Readiness(Clock(), {n: lambda n=n: results[n] for n in results}, lambda: bool(draining))
        self.assertEqual(readiness.reasons(), ["not checked yet", "not checked yet"])
        readiness.check()
        self.assertEqual(readiness.reasons(), ["policy API unreachable: refused"])
        results["policy API"] = defer.succeed(None)
        readiness.check()
        self.assertEqual(readiness.reasons(), [])
        draining.append(True)
        self.assertEqual(readiness.reasons(), ["draining"])


class EndpointTests(TestCase):
    timeout = 30

    def get(self, path):
        url = f"http://127.0.0.1:{self.metrics}{path}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        return treq.get(url, pool=pool).addCallback(
            lambda response: response.text().addCallback(lambda body: (response.code, body)))

    @defer.inlineCallbacks
    def test_health_and_readiness_through_start_api_and_upstream_down_and_drain(self):
        parts = directory, certs, api, upstream = twistd_parts(self)
        port, self.metrics = free_port(), free_port()
        process, twistd = spawn_proxy(self, parts, port, f"--metrics=127.0.0.1:{self.metrics}")
        yield twistd.logged("readiness: ready")
        self.assertEqual((yield self.get("/healthz")), (200, "ok\n"))
        self.assertEqual((yield self.get("/readyz")), (200, "ready\n"))
        yield api.close()
        yield twistd.logged("readiness: policy API unreachable")
        code, body = yield self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertIn("policy API unreachable", body)
        yield upstream.close()
        yield twistd.logged("readiness: upstream unreachable")
        code, body = yield self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertIn("upstream unreachable", body)
        # A client in the middle of DATA keeps the drain going.
        client = yield connect(reactor, port)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(client_options(certs))
        yield client.command(AUTH_PLAIN, expect=235)
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        yield client.command(b"RCPT TO:<bob@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(b"Subject: half\r\n")
        process.signalProcess("TERM")
        yield twistd.logged("draining:")
        code, body = yield self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertTrue(body.startswith("draining\n"), body)
        self.assertEqual((yield self.get("/healthz")), (200, "ok\n"))
        client.transport.abortConnection()
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
