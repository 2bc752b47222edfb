# -*- test-case-name: tests.test_startup -*-
"""
Start-up checks that stop the process: one line on stderr naming the option
and the cause, a non-zero exit, and nothing left running.

twistd's own C{StreamServerEndpointService} listens once the application
starts and only logs a failure, so a port that is taken left a process that
served nothing and later exited 0.  Here every listener is opened while the
plugin builds its service, like every other start-up check: before twistd
writes its pid file, daemonizes or drops privileges (so port 25 still
binds), and while stderr is still the operator's terminal.
"""

import sys
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure


def fail(message):
    """One clear line on stderr and a non-zero exit (docs/protocol.rst section 6)."""
    sys.stderr.write(f"smtpproxy: {message}\n")
    raise SystemExit(2)


def check_http_url(option, value):
    """
    Stop unless C{value} is an absolute http or https URL: anything else
    would only show up as a temporary failure of every message.
    """
    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError as e:  # a port out of range
        fail(f"--{option}={value}: not a usable URL ({e})")
    if not usable:
        fail(f"--{option}={value}: not an http:// or https:// URL")


class ListeningPort(Service):
    """A port opened at start-up (L{listen}); stopping the service closes it."""

    def __init__(self, port):
        self.port = port

    def stopService(self):
        super().stopService()
        return maybeDeferred(self.port.stopListening)


def listen(option, address, endpoint, factory):
    """
    Listen on C{endpoint} now, or stop the start with one line.

    Every endpoint the proxy offers (tcp, tcp6, unix, systemd, and those
    wrapped by haproxy) listens synchronously; one that has not done so by
    the time C{listen} returns is refused rather than left to fail later
    with nobody told.

    @param option: the option's name, for the error line.
    @param address: the option's value, for the error line.
    @return: a L{ListeningPort} to add to the application.
    """
    outcome = []
    listening = endpoint.listen(factory)
    listening.addBoth(outcome.append)
    if not outcome:
        listening.cancel()
        fail(f"--{option}={address}: the endpoint did not start listening at once")
    if isinstance(outcome[0], Failure):
        fail(f"--{option}={address}: cannot listen: {_cause(outcome[0].value)}")
    return ListeningPort(outcome[0])


def _cause(error):
    """The operator's words for why a port could not be opened."""
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
