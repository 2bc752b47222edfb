# -*- test-case-name: tests.test_health -*-
"""
Health and readiness for load balancers and Kubernetes, served beside
C{/metrics} on the C{--metrics} listener.

C{GET /healthz} is C{200 ok} whenever it is answered at all: the reactor
runs.  C{GET /readyz} is C{200 ready} while the proxy takes mail, and C{503}
with the reasons, one a line, while it drains or while the upstream or a
policy API cannot be reached, so a balancer sends new clients elsewhere.
Reachability is checked in the background every L{CHECK_INTERVAL} seconds,
never per request, so probing the proxy often costs the upstream and the
API nothing: the upstream with the EHLO probe that also tells what it offers
(L{smtpproxy.upstream.probe}), each API with a TCP connection.  A check
that changes the answer is one log line.
"""

from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from smtpproxy.pages import TEXT, Page

log = Logger(namespace="smtpproxy.health")

CHECK_INTERVAL = 5
"""Seconds between two reachability checks."""


class Readiness(Service):
    """
    The background checks and what they found.

    @param clock: runs the checks.
    @param checks: name -> a callable returning a Deferred that fires when
        that peer answered, or fails with the reason it did not.
    @param draining: a callable saying whether the proxy is draining.
    """

    def __init__(self, clock, checks, draining):
        self._checks = checks
        self._draining = draining
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self.problems = {name: "not checked yet" for name in checks}

    def startService(self):
        super().startService()
        self._loop.start(CHECK_INTERVAL)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self):
        """Check every peer once."""
        for name, check in self._checks.items():
            check().addCallbacks(self._reached, self._missed, (name,), None, (name,))

    def _reached(self, result, name):
        problem = self.problems.pop(name, None)
        if problem is not None and not self.problems:
            log.info("readiness: ready, every peer reachable")
        elif problem not in (None, "not checked yet"):
            log.info("readiness: {name} reachable again", name=name)

    def _missed(self, failure, name):
        reason = f"{name} unreachable: {failure.getErrorMessage()}"
        if self.problems.get(name) != reason:
            log.warn("readiness: {reason}", reason=reason)
        self.problems[name] = reason

    def reasons(self):
        """Why the proxy is not ready now; empty when it is."""
        reasons = ["draining"] if self._draining() else []
        return reasons + sorted(self.problems.values())

    def page(self):
        """C{/readyz}: C{200 ready}, or C{503} and the reasons, one a line."""
        reasons = self.reasons()
        if reasons:
            return 503, "".join(reason + "\n" for reason in reasons).encode("utf-8")
        return 200, b"ready\n"


def tcp_check(reactor, url, timeout=CHECK_INTERVAL):
    """A check that a TCP connection to C{url}'s host and port can be made."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=timeout)
    factory = Factory.forProtocol(Protocol)
    factory.noisy = False  # no "Starting factory" line every few seconds

    def check():
        connected = endpoint.connect(factory)
        return connected.addCallback(lambda protocol: protocol.transport.loseConnection())

    return check


def add_pages(root, readiness):
    """Serve C{/healthz} and C{/readyz} under C{root} (the metrics site)."""
    root.putChild(b"healthz", Page(TEXT, lambda: (200, b"ok\n")))
    root.putChild(b"readyz", Page(TEXT, readiness.page))
