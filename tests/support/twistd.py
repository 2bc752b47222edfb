"""
C{twistd} from this checkout as a child process, for tests of the real
thing: command line, signals, inherited sockets.  L{ChildProcess} watches
any child that logs to stderr (haproxy too).
"""

import os
import socket
import sys

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def twistd_command(*arguments):
    """
    The argv of C{twistd -n --pidfile= ARGUMENTS...}, run by this Python:
    the tests need neither a C{twistd} script on the PATH nor a pid file.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *arguments]


def twistd_environment(**extra):
    """This environment, with the checkout first on the path so its code and plugins are used."""
    return {**os.environ, "PYTHONPATH": ROOT, **extra}


class ChildProcess(ProcessProtocol):
    """A child: its log (stderr) as it comes, and its end (ProcessDone or ProcessTerminated)."""

    def __init__(self):
        self.log = ""
        self.ended = defer.Deferred()
        self._waiting = []

    def errReceived(self, data):
        self.log += data.decode("utf-8", "replace")
        for text, waiter in list(self._waiting):
            if text in self.log:
                self._waiting.remove((text, waiter))
                waiter.callback(None)

    def logged(self, text):
        """A Deferred that fires once C{text} is in the log."""
        if text in self.log:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiting.append((text, waiter))
        return waiter

    def processEnded(self, reason):
        waiting, self._waiting = self._waiting, []
        for text, waiter in waiting:
            waiter.errback(AssertionError(f"the child ended before logging {text!r}:\n{self.log}"))
        self.ended.callback(reason.value)


def free_port():
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
