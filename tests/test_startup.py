"""
Start-up errors are fatal and short (issue 13): the real twistd, for the
proxy and for the reference API, given a port that is taken, a port that
does not exist and an API that is no URL, says so in one line on stderr and
exits non-zero with nothing left running.
"""

import os
import socket
import sys

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessTerminated
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import startup
from tests.support.certs import make_certificates
from tests.support.twistd import ChildProcess, free_port, twistd_command, twistd_environment
from tests.support.refapi import POLICY


class TwistdStartTests(TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.certs = make_certificates(self.directory)
        self.taken = socket.socket()
        self.addCleanup(self.taken.close)
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen()
        self.taken_address = f"127.0.0.1:{self.taken.getsockname()[1]}"

    @defer.inlineCallbacks
    def refused(self, *arguments):
        """Run twistd; once it has ended, its stderr, which must be one line."""
        child = ChildProcess()
        process = reactor.spawnProcess(
            child, sys.executable, twistd_command(*arguments),
            env=twistd_environment(), path=self.directory,
        )
        self.addCleanup(lambda: child.ended.called or process.signalProcess("KILL"))
        ended = yield child.ended
        self.assertIsInstance(ended, ProcessTerminated, child.log)
        self.assertEqual(ended.exitCode, 2, child.log)
        self.assertEqual(child.log.count("\n"), 1, child.log)
        return child.log

    def proxy(self, **changes):
        values = {"listen": f"127.0.0.1:{free_port()}", "tohost": "127.0.0.1", "toport": "25",
                  "tls_cert": self.certs.cert_path, "tls_key": self.certs.key_path,
                  "api": "http://127.0.0.1:8025/"}
        values.update(changes)
        return self.refused("smtpproxy", *[f"--{k}={v}" for k, v in values.items()])

    def refapi(self, listen):
        path = os.path.join(self.directory, "policy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(POLICY)
        return self.refused("smtpproxy-refapi", f"--policy={path}", f"--listen={listen}")

    def assertInUse(self, line, option):
        """The one line a start-up on the taken port prints, naming C{--option}."""
        self.assertEqual(
            line, f"smtpproxy: --{option}={self.taken_address}: cannot listen: Address already in use\n")

    @defer.inlineCallbacks
    def test_proxy_port_in_use(self):
        self.assertInUse((yield self.proxy(listen=self.taken_address)), "listen")

    @defer.inlineCallbacks
    def test_proxy_bad_port(self):
        line = yield self.proxy(listen="127.0.0.1:99999")
        self.assertTrue(line.startswith("smtpproxy: --listen=127.0.0.1:99999: cannot listen: "), line)

    @defer.inlineCallbacks
    def test_proxy_api_not_a_url(self):
        line = yield self.proxy(api="notaurl")
        self.assertEqual(line, "smtpproxy: --api=notaurl: not an http:// or https:// URL\n")

    @defer.inlineCallbacks
    def test_metrics_port_in_use(self):
        self.assertInUse((yield self.proxy(metrics=self.taken_address)), "metrics")

    @defer.inlineCallbacks
    def test_refapi_port_in_use(self):
        self.assertInUse((yield self.refapi(self.taken_address)), "listen")

    @defer.inlineCallbacks
    def test_refapi_bad_port(self):
        line = yield self.refapi("127.0.0.1:99999")
        self.assertTrue(line.startswith("smtpproxy: --listen=127.0.0.1:99999: cannot listen: "), line)


class URLTests(SynchronousTestCase):
    def test_usable(self):
        for url in ["http://127.0.0.1:8025/", "https://policy.example/check", "http://[::1]/"]:
            startup.check_http_url("api", url)

    def test_refused(self):
        self.patch(sys, "stderr", open(os.devnull, "w"))
        self.addCleanup(sys.stderr.close)
        for url in ["notaurl", "ftp://host/", "http:///path", "http://host:0/", "http://host:99999/"]:
            with self.assertRaises(SystemExit, msg=url):
                startup.check_http_url("api", url)
