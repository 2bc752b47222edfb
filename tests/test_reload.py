"""
Certificate reload (SIGHUP, issue 3), without the signal: the proxy over
loopback with real TLS, a client looking at the certificate it is shown
before and after L{ReloadableContext.reload}.  (The signal itself is sent
to a real twistd in tests/test_drain.py.)
"""

import os
import shutil

from twisted.internet import defer, reactor
from twisted.internet.ssl import CertificateOptions
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from smtpproxy import Policy, ProxyConfig, Upstream, build_factory
from smtpproxy.tls import ReloadableContext, TLSFilesError
from tests.support.api import start_api
from tests.support.certs import make_certificates
from tests.support.client import connect
from tests.support.loopback import listen_loopback
from tests.support.mail import AUTH_PLAIN
from tests.support.stack import allow
from tests.support.upstream import start_upstream


class ReloadTests(TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.pairs = []
        for name in ["first", "second", "live"]:
            os.makedirs(os.path.join(self.directory, name))
            self.pairs.append(make_certificates(os.path.join(self.directory, name)))
        self.first, self.second, self.live = self.pairs
        self.install(self.first)
        self.context = ReloadableContext(self.live.cert_path, self.live.key_path)
        api = start_api(reactor, allow)
        self.addCleanup(api.close)
        upstream = start_upstream(reactor)
        self.addCleanup(upstream.close)
        config = ProxyConfig(
            policy=Policy(url=api.url),
            upstream=Upstream(host="127.0.0.1", port=upstream.port),
            tls=self.context,
            hostname="proxy.test",
        )
        factory = build_factory(config, reactor)
        self.addCleanup(factory.close)
        server = listen_loopback(reactor, factory)
        self.addCleanup(server.close)
        self.port = server.port

    def install(self, pair):
        """Put C{pair} where the proxy's files are, as an operator's renewal does."""
        shutil.copy(pair.cert_path, self.live.cert_path)
        shutil.copy(pair.key_path, self.live.key_path)

    @defer.inlineCallbacks
    def tls_session(self):
        """A client inside TLS; fires with it and the certificate the proxy showed."""
        client = yield connect(reactor, self.port)
        self.addCleanup(client.close)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(CertificateOptions())  # no verification: the test looks itself
        shown = client.transport.getPeerCertificate().to_cryptography()
        return client, shown

    @defer.inlineCallbacks
    def test_new_connections_get_the_new_certificate(self):
        before, shown = yield self.tls_session()
        self.assertEqual(shown, self.first.certificate)
        self.install(self.second)
        self.assertTrue(self.context.reload())
        _, shown = yield self.tls_session()
        self.assertEqual(shown, self.second.certificate)
        yield before.command(b"EHLO client.example", expect=250)
        yield before.command(AUTH_PLAIN, expect=235)

    @defer.inlineCallbacks
    def test_broken_pair_keeps_the_old_one(self):
        shutil.copy(self.second.cert_path, self.live.cert_path)  # key of the first: no match
        with capturedLogs() as events:
            self.assertFalse(self.context.reload())
        (error,) = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(error["log_level"], LogLevel.error)
        self.assertIn("does not match certificate", error["reason"])
        _, shown = yield self.tls_session()
        self.assertEqual(shown, self.first.certificate)

    def test_missing_files(self):
        os.remove(self.live.key_path)
        with capturedLogs():
            self.assertFalse(self.context.reload())
        self.assertRaises(TLSFilesError, ReloadableContext, self.live.cert_path, self.live.key_path)
