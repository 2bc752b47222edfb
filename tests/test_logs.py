"""
Tests for L{smtpproxy.logs}: the main log and the smtplog routing, and log
files that SIGUSR1 reopens after logrotate moved them.
"""

import errno
import io
import os
import pwd
import signal
import stat
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.logs import LogFile, LogRouter, main_log, reopen
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

    def test_file_left_in_place_is_kept(self):
        """
        logrotate leaves an empty log where it is (notifempty): SIGUSR1 must
        not open it again, which the --user could not do for a file root
        created at start.
        """
        log_file = LogFile(self.path)
        def refused(*arguments):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        self.patch(os, "open", refused)
        with capturedLogs() as events:
            reopen([log_file], "nobody")
        self.assertEqual([formatEvent(e) for e in events], ["log files reopened"])
        log_file.write("still here\n")
        log_file.flush()
        self.assertEqual(self.read(self.path), "still here\n")

    def test_service_reopens_and_survives_a_failure(self):
        """
        SIGUSR1's work: every file reopened; one that cannot be stays in use,
        and the error names the fix; nothing claims the files were reopened.
        """
        good, bad = LogFile(self.path), LogFile(self.path + ".other")
        service = ProxyService(None, None, pwd.getpwnam("nobody"), MemoryReactorClock(), 30,
                               [bad, good])
        os.rename(self.path, self.path + ".1")
        bad.path = os.path.join(self.path + ".no-such-directory", "x.log")
        with capturedLogs() as events:
            service.reopen_logs()
        (line,) = [formatEvent(e) for e in events]
        self.assertIn(f"cannot reopen log file {bad.path}: No such file or directory", line)
        self.assertIn("a directory that user nobody can write", line)
        good.write("after\n")
        bad.write("still written\n")
        good.flush()
        bad.flush()
        self.assertEqual(self.read(self.path), "after\n")
        self.assertEqual(self.read(self.path + ".other"), "still written\n")

    def test_created_private_whatever_the_umask(self):
        """0640, or the mode asked for (0600: the smtplog with passwords); existing files keep theirs."""
        previous = os.umask(0o000)
        self.addCleanup(os.umask, previous)
        LogFile(self.path)
        LogFile(self.path + ".smtp", 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(self.path + ".smtp").st_mode), 0o600)
        os.chmod(self.path, 0o644)
        LogFile(self.path).reopen()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)

    def test_main_log_destination(self):
        """--logpath, else twistd's --syslog or --logfile, else stderr (-n) or twistd.log."""
        opened = []
        def open_file(path):
            opened.append(path)
            return path
        self.assertEqual(main_log("main.log", {"logfile": "t.log"}, open_file), "main.log")
        self.assertEqual(main_log(None, {"logfile": "t.log"}, open_file), "t.log")
        self.assertIs(main_log(None, {"logfile": "-", "nodaemon": True}, open_file), sys.stdout)
        self.assertIs(main_log(None, {"nodaemon": True}, open_file), sys.stderr)
        self.assertIs(main_log(None, {}, open_file), sys.stderr)
        self.assertEqual(main_log(None, {"nodaemon": False}, open_file), "twistd.log")
        self.assertTrue(ILogObserver.providedBy(main_log(None, {"syslog": True}, open_file)))
        self.assertEqual(opened, ["main.log", "t.log", "twistd.log"])

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
