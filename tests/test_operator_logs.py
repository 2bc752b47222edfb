"""
Logs an operator can use (issue 13), from the real twistd: the line of a
message whose client went away mid-DATA and its metric, the negotiated TLS
in the logs, a failed handshake, private log files, twistd's own
C{--logfile}.
"""

import errno
import os
import stat
import sys
import tempfile

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionLost, ProcessDone
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from smtpproxy import Limits
from tests.support.certs import client_options, make_certificates
from tests.support.client import connect, send_mail
from tests.support.mail import AUTH_PLAIN, MESSAGE, PASSWORD, USER
from tests.support.session import SessionTestCase
from tests.support.twistd import (
    ChildProcess, free_port, twistd_command, twistd_environment, twistd_parts)


class OperatorLogTests(TestCase):
    def setUp(self):
        self.directory, self.certs, self.api, self.upstream = twistd_parts(self)

    def path(self, name):
        return os.path.join(self.directory, name)

    def start(self, *extra, twistd_options=(), umask=None, running="SIGTERM drains"):
        """
        Start twistd; a Deferred firing with its L{ChildProcess} once it has
        logged C{running} (on stderr or stdout).
        """
        self.port = free_port()
        twistd = ChildProcess()
        self.process = reactor.spawnProcess(
            twistd, sys.executable,
            twistd_command(
                *twistd_options, "smtpproxy", f"--listen=127.0.0.1:{self.port}",
                "--tohost=127.0.0.1", f"--toport={self.upstream.port}", f"--api={self.api.url}",
                f"--tls_cert={self.certs.cert_path}", f"--tls_key={self.certs.key_path}",
                "--hostname=proxy.test", *extra, umask=umask),
            env=twistd_environment(), path=self.directory,
        )
        self.addCleanup(lambda: twistd.ended.called or self.process.signalProcess("KILL"))
        return twistd.logged(running).addCallback(lambda _: twistd)

    @defer.inlineCallbacks
    def stop(self, twistd):
        self.process.signalProcess("TERM")
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)

    def read(self, name):
        with open(self.path(name), encoding="utf-8") as f:
            return f.read()

    @defer.inlineCallbacks
    def test_aborted_message_line_metric_and_smtplog(self):
        """A client gone mid-DATA while the API thinks: one line, outcome aborted, smtplog."""
        metrics = free_port()
        asked = defer.Deferred()
        self.api.answer = lambda request: asked.called or asked.callback(None) or defer.Deferred()
        twistd = yield self.start("--smtplog=smtp.log", f"--metrics=127.0.0.1:{metrics}")
        client = yield connect(reactor, self.port)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(client_options(self.certs))
        yield client.command(AUTH_PLAIN, expect=235)
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        yield client.command(b"RCPT TO:<bob@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(b"Subject: half\r\n\r\nthe first half of the bo")
        yield asked
        client.transport.abortConnection()
        yield twistd.logged("message aborted")
        (line,) = [line for line in twistd.log.splitlines() if "message aborted" in line]
        self.assertRegex(
            line, r"message aborted conn=1 client=127\.0\.0\.1 user='alice' "
                  r"from=<alice@example\.com> rcpts=1 after=3\d policy=pending "
                  r"tls=TLSv1\.[23]/\S+ time=\d+ms")
        after = line.split("after=")[1].split()[0]
        response = yield treq.get(f"http://127.0.0.1:{metrics}/metrics",
                                  pool=HTTPConnectionPool(reactor, persistent=False))
        body = yield response.text()
        self.assertIn('smtpproxy_messages_total{outcome="aborted"} 1.0', body)
        yield self.stop(twistd)
        transcript = self.read("smtp.log")
        self.assertRegex(transcript, r"1 < \[TLS TLSv1\.[23]/\S+\]")
        self.assertIn(f"1 < [connection lost in DATA after {after} bytes]", transcript)

    @defer.inlineCallbacks
    def test_delivered_message_line_has_connection_and_tls(self):
        twistd = yield self.start()
        reply = yield send_mail(reactor, self.port, client_options(self.certs), USER, PASSWORD,
                                "alice@example.com", ["bob@example.net"], MESSAGE)
        self.assertEqual(reply.code, 250)
        yield twistd.logged("message delivered")
        self.assertRegex(twistd.log, r"message delivered conn=1 client=127\.0\.0\.1 .* "
                                     r"policy=allow api=\d+ms tls=TLSv1\.3/TLS_\S+ reply=250")
        yield self.stop(twistd)

    @defer.inlineCallbacks
    def test_static_rsa_cbc_client_refused_and_logged(self):
        """
        TLS 1.2 offering only AES128-SHA (no forward secrecy, CBC) to a proxy
        with an RSA certificate, which could do it: no handshake, one info line.
        """
        os.makedirs(self.path("rsa"))
        self.certs = make_certificates(self.path("rsa"), key_type="rsa")
        twistd = yield self.start()
        client = yield connect(reactor, self.port)
        yield client.command(b"EHLO client.example", expect=250)
        old = CertificateOptions(
            raiseMinimumTo=TLSVersion.TLSv1_2, lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString("AES128-SHA"))
        yield self.assertFailure(client.starttls(old), Exception)
        yield twistd.logged("TLS handshake failed")
        self.assertIn("[smtpproxy.tls#info] TLS handshake failed with 127.0.0.1: no shared cipher",
                      twistd.log)
        yield self.stop(twistd)

    @defer.inlineCallbacks
    def test_tls_policy_options(self):
        """--tls_ciphers and --tls_min_version reach the listener: here only TLS 1.3."""
        twistd = yield self.start("--tls_min_version=1.3", "--tls_ciphers=AES128-SHA")
        client = yield connect(reactor, self.port)
        yield client.command(b"EHLO client.example", expect=250)
        tls12 = CertificateOptions(lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        yield self.assertFailure(client.starttls(tls12), Exception)
        yield twistd.logged("TLS handshake failed")
        self.assertIn("TLS handshake failed with 127.0.0.1: unsupported protocol", twistd.log)
        yield self.stop(twistd)

    @defer.inlineCallbacks
    def test_log_files_private_under_umask_022(self):
        """
        The files are made before the listeners open, so a taken metrics port
        ends the start right after (the log goes to the files, not to stderr,
        so there is nothing else to wait for).
        """
        twistd = yield self.start(
            "--logpath=main.log", "--smtplog=smtp.log", "--credentials",
            f"--metrics=127.0.0.1:{self.upstream.port}", umask=0o022, running="cannot listen")
        yield twistd.ended
        self.assertEqual(stat.S_IMODE(os.stat(self.path("main.log")).st_mode), 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("smtp.log")).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_twistd_logfile_is_honoured(self):
        """Without --logpath, twistd's --logfile decides (here -, standard output)."""
        twistd = yield self.start(twistd_options=["--logfile=-"])
        self.assertIn("SIGTERM drains", twistd.output)
        self.assertNotIn("SIGTERM drains", twistd.log)
        yield self.stop(twistd)


class _FullDisk(tempfile.SpooledTemporaryFile):
    """A spool whose disk is full: fine in memory, ENOSPC when it goes to a file."""

    def rollover(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class MessageLineTests(SessionTestCase):
    """The message's one line in the cases a client or the disk cut short."""

    limits = Limits(spool_memory=10)

    def message_lines(self, events):
        return [formatEvent(e) for e in events if e["log_namespace"] == "smtpproxy.message"]

    def test_aborted_after_the_api_allowed(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nsome of the body\r\n")
        with capturedLogs() as events:
            self.session.connectionLost(Failure(ConnectionLost()))
        (line,) = self.message_lines(events)
        self.assertRegex(line, r"^message aborted conn=1 client=192\.168\.1\.1 user='alice' "
                               r"from=<alice@example\.com> rcpts=1 after=\d+ policy=allow ")
        self.assertEqual(self.factory.metrics.registry.get_sample_value(
            "smtpproxy_messages_total", {"outcome": "aborted"}), 1)
        self.assertEqual(self.factory.deliveries, [])

    def test_full_spool_is_one_warning_and_451(self):
        """No traceback; the API was asked, so its answer is the policy field."""
        self.patch(tempfile, "SpooledTemporaryFile", _FullDisk)
        self.envelope()
        with capturedLogs() as events:
            lines = self.send(b"DATA\r\nSubject: x\r\n\r\n" + b"body line\r\n" * 5 + b".\r\n")
        self.assertEqual(lines[-1], "451 4.3.0 Local error in processing, try again later")
        warning, line = [formatEvent(e) for e in events]
        self.assertEqual(
            warning, "cannot spool a message: No space left on device (conn=1 client=192.168.1.1); "
                     "it gets 451, the client will retry")
        self.assertIn("message temp_failed conn=1", line)
        self.assertIn("policy=allow", line)
