"""
C{twistd} from this checkout as a child process, for tests of the real
thing: command line, signals, inherited sockets.  L{ChildProcess} watches
any child that logs to stderr (haproxy too).
"""

import os
import socket
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def twistd_command(*arguments, umask=None, nofile=None):
    """
    The argv of C{twistd -n --pidfile= ARGUMENTS...}, run by this Python:
    the tests need neither a C{twistd} script on the PATH nor a pid file.
    With C{umask}, twistd runs under that umask, as from an operator's shell;
    with C{nofile}, under that open-file limit, soft and hard (C{ulimit -n}).
    """
    start = "from twisted.scripts.twistd import run; run()"
    if umask is not None:
        start = f"import os; os.umask({umask:#o}); " + start
    if nofile is not None:
        start = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); " + start
    return [sys.executable, "-c", start, "-n", "--pidfile=", *arguments]


def twistd_environment(**extra):
    """This environment, with the checkout first on the path so its code and plugins are used."""
    return {**os.environ, "PYTHONPATH": ROOT, **extra}


class ChildProcess(ProcessProtocol):
    """
    A child: its log (stderr; stdout apart in C{output}) as it comes, and its
    end (ProcessDone or ProcessTerminated).
    """

    def __init__(self):
        self.log = ""
        self.output = ""
        self.ended = defer.Deferred()
        self._waiting = []

    def outReceived(self, data):
        """Standard output (where C{--logfile=-} sends the log) is watched as well."""
        self.output += data.decode("utf-8", "replace")
        self.errReceived(b"")

    def errReceived(self, data):
        self.log += data.decode("utf-8", "replace")
        for text, waiter in list(self._waiting):
            if text in self.log or text in self.output:
                self._waiting.remove((text, waiter))
                waiter.callback(None)

    def logged(self, text):
        """A Deferred that fires once C{text} is in the log."""
        if text in self.log or text in self.output:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiting.append((text, waiter))
        return waiter

    def processEnded(self, reason):
        waiting, self._waiting = self._waiting, []
        for text, waiter in waiting:
            waiter.errback(AssertionError(f"the child ended before logging {text!r}:\n{self.log}"))
        self.ended.callback(reason.value)


def twistd_parts(case):
    """
    What a test of the proxy as a twistd child needs, for C{case} (a
    TestCase; its cleanups close them): a directory, certificates in it, a
    fake API that allows and a fake upstream.

    @return: C{(directory, certs, api, upstream)}.
    """
    from tests.support.api import start_api
    from tests.support.certs import make_certificates
    from tests.support.stack import allow
    from tests.support.upstream import start_upstream

    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    api = start_api(reactor, allow)
    case.addCleanup(api.close)
    upstream = start_upstream(reactor)
    case.addCleanup(upstream.close)
    return directory, make_certificates(directory), api, upstream


def spawn_proxy(case, parts, port, *extra, **command):
    """
    Run C{twistd -n smtpproxy} for C{case}, listening on 127.0.0.1:C{port}
    with L{twistd_parts}' C{parts} (API, upstream, certificates) and the
    C{extra} options; C{command} goes to L{twistd_command}.  The test's
    cleanup kills it if it is still running.

    @return: C{(process, child)}: the process transport, the L{ChildProcess}.
    """
    directory, certs, api, upstream = parts
    child = ChildProcess()
    process = reactor.spawnProcess(
        child, sys.executable,
        twistd_command(
            "smtpproxy", f"--listen=127.0.0.1:{port}", "--tohost=127.0.0.1",
            f"--toport={upstream.port}", f"--api={api.url}", f"--tls_cert={certs.cert_path}",
            f"--tls_key={certs.key_path}", "--hostname=proxy.test", *extra, **command),
        env=twistd_environment(), path=directory,
    )
    case.addCleanup(lambda: child.ended.called or process.signalProcess("KILL"))
    return process, child


def free_port():
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
