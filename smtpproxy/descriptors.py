# -*- test-case-name: tests.test_descriptors -*-
"""
File descriptors: the limit that runs out before any of the proxy's own.

Each session may hold three descriptors at once (the client, the policy
API, the upstream), and Debian's default soft limit of 1024 cannot carry
the default C{--max_connections} of 1000.  So at start the soft
C{RLIMIT_NOFILE} is raised to the hard one, and one warning line says so
if that is still too little (L{raise_limit}), as nginx warns about its
C{worker_connections}.

When the table is full anyway, C{accept} fails with C{EMFILE}.  Twisted's
port then logs a line and tries again at every turn of the reactor, while
the client waits in the kernel's queue with no answer.  L{guard} wraps a
listening port's socket so that instead one descriptor held in reserve is
let go, the waiting client is accepted and told C{421 4.3.2} (a metrics
scrape is served instead), and the reserve is taken back; the refusals are
counted into one log line a minute (L{smtpproxy.reports.FloodReport}).
"""

import errno
import os
import resource

from twisted.internet.error import ConnectError

PER_SESSION = 3
"""Descriptors one session may hold: the client, the API, the upstream."""

SPARE = 64
"""Descriptors for everything else: listeners, log files, reserves, probes."""

_EXHAUSTED = (errno.EMFILE, errno.ENFILE)

REFUSAL = b"421 4.3.2 Service temporarily unavailable (no descriptor free), try again later\r\n"


def raise_limit(max_connections):
    """
    Raise the soft open-file limit to the hard one.

    @return: a warning for the log if the limit still cannot carry
        C{max_connections} sessions, else C{None}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections * PER_SESSION + SPARE
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= need:
        return None
    return (
        f"open-file limit {soft} cannot carry --max_connections={max_connections} "
        f"(up to {need} descriptors: a client, an API and an upstream connection each); "
        f"raise it (LimitNOFILE=, ulimit -n) or lower --max_connections"
    )


class Reserve:
    """One descriptor held back for the moment the table is full."""

    def __init__(self):
        self._fd = None
        self.take()

    def take(self):
        """Hold the descriptor again, if one can be had."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass

    def release(self):
        """Let the descriptor go; whether there was one."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


class _GuardedSocket:
    """
    A listening socket whose C{accept} answers a full descriptor table
    instead of failing.  Everything else is the socket's own.
    """

    def __init__(self, socket, reserve, exhausted, refusal):
        self._socket = socket
        self._reserve = reserve
        self._exhausted = exhausted
        self._refusal = refusal

    def __getattr__(self, name):
        return getattr(self._socket, name)

    def accept(self):
        self._reserve.take()
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno not in _EXHAUSTED:
                raise
        accepted = self._use_reserve()
        if accepted is not None:
            return accepted
        # Twisted's port stops accepting for this turn on EAGAIN, silently.
        raise BlockingIOError(errno.EAGAIN, "no descriptor free")

    def _use_reserve(self):
        """
        Accept one waiting client on the reserve: refuse it (the reserve is
        back at once), or with no refusal to give, hand it on.
        """
        if not self._reserve.release():
            return None
        try:
            connection, address = self._socket.accept()
        except OSError:
            self._reserve.take()
            return None
        self._exhausted(address[0] if isinstance(address, tuple) else str(address))
        if self._refusal is None:
            return connection, address
        try:
            connection.setblocking(False)
            connection.send(self._refusal)
        except OSError:
            pass
        connection.close()
        self._reserve.take()
        return None


def guard(port, exhausted, refusal=REFUSAL):
    """
    Make C{port} (a listening port with a C{socket}, as Twisted's TCP and
    UNIX ports have) answer a full descriptor table: with C{refusal} sent
    to the waiting client, or, with C{refusal=None}, by serving it on the
    reserve.  A port without such a socket is left as it is.

    @param exhausted: called with the client's address for each client
        accepted on the reserve (to count and log them).
    """
    socket = getattr(port, "socket", None)
    if socket is not None and hasattr(socket, "accept"):
        port.socket = _GuardedSocket(socket, Reserve(), exhausted, refusal)
    return port


def exhausted(failure):
    """
    Whether C{failure} is a connection (to the API, to the upstream) that
    could not be made for want of a descriptor.  Twisted's HTTP client may
    wrap it in a list of C{reasons}.
    """
    error = failure.value
    if isinstance(error, ConnectError) and error.osError in _EXHAUSTED:
        return True
    return any(exhausted(reason) for reason in getattr(error, "reasons", ()))


def log_shortage(log, counts, last):
    """
    One line for everything a full descriptor table stopped since the last:
    clients accepted on the reserve (C{"accept"}), connections to the API or
    the upstream not made (C{"connect"}, the message got a 451).
    """
    log.warn(
        "no file descriptor free: {accepts} client(s) accepted on the reserve (421, or a "
        "metrics scrape served), {connects} connection(s) to the API or upstream not made "
        "(451), the last for {last}; raise the open-file limit or lower --max_connections",
        accepts=counts["accept"], connects=counts["connect"], last=last,
    )
