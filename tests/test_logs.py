"""
Tests for L{smtpproxy.logs}: the main log and the smtplog routing, and log
files that SIGUSR1 reopens after logrotate moved them.
"""

import io
import os
import signal

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.logs import LogFile, LogRouter
from smtpproxy.tap import ProxyService


class RouterTests(SynchronousTestCase):
    def test_transcript_only_in_the_smtplog(self):
        main, smtp = io.StringIO(), io.StringIO()
        router = LogRouter(main, LogLevel.info, smtp)
        Logger(namespace="smtpproxy.smtp", observer=router).info("1 < NOOP")
        Logger(namespace="smtpproxy.message", observer=router).info("message delivered")
        Logger(namespace="smtpproxy.message", observer=router).debug("detail")
        self.assertIn("1 < NOOP", smtp.getvalue())
        self.assertNotIn("message delivered", smtp.getvalue())
        self.assertIn("message delivered", main.getvalue())
        self.assertNotIn("NOOP", main.getvalue())
        self.assertNotIn("detail", main.getvalue())


class LogFileTests(SynchronousTestCase):
    def setUp(self):
        os.mkdir(self.mktemp())
        self.path = os.path.join(self.mktemp(), "proxy.log")
        os.makedirs(os.path.dirname(self.path))

    def read(self, path):
        with open(path, encoding="utf-8") as f:
            return f.read()

    def test_reopen_after_rotation(self):
        """Lines before the rename stay in the old file, the next ones start the new."""
        log_file = LogFile(self.path)
        log_file.write("before\n")
        os.rename(self.path, self.path + ".1")
        log_file.write("still the old file\n")
        log_file.reopen()
        log_file.write("after\n")
        log_file.flush()
        self.assertEqual(self.read(self.path + ".1"), "before\nstill the old file\n")
        self.assertEqual(self.read(self.path), "after\n")

    def test_service_reopens_and_survives_a_failure(self):
        """SIGUSR1's work: every file reopened; one that cannot be stays in use."""
        good, bad = LogFile(self.path), LogFile(self.path + ".other")
        service = ProxyService(None, None, None, MemoryReactorClock(), 30, [bad, good])
        os.rename(self.path, self.path + ".1")
        bad.path = os.path.join(self.path + ".no-such-directory", "x.log")
        service.reopen_logs()
        good.write("after\n")
        bad.write("still written\n")
        good.flush()
        bad.flush()
        self.assertEqual(self.read(self.path), "after\n")
        self.assertEqual(self.read(self.path + ".other"), "still written\n")

    def test_signal_handled_while_running(self):
        """SIGUSR1 is the service's while it runs, and given back when it stops."""
        previous = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)]
        service = ProxyService(None, None, None, MemoryReactorClock(), 30, [])
        service.running = True
        service._catch_signals()
        self.addCleanup(signal.signal, signal.SIGTERM, previous[0])
        self.addCleanup(signal.signal, signal.SIGHUP, previous[1])
        self.addCleanup(signal.signal, signal.SIGUSR1, previous[2])
        self.assertEqual(signal.getsignal(signal.SIGUSR1), service._user1)
