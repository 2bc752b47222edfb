# -*- test-case-name: tests.test_esmtp -*-
"""
What the upstream offers, as the proxy last saw it in the upstream's EHLO.

The proxy offers its clients DSN and SMTPUTF8 only while the upstream does,
and SIZE no larger than the upstream's: a promise the proxy cannot keep
would turn into a refusal after the client has uploaded the whole message.
It learns the upstream's EHLO from a probe when it starts (repeated with a
growing delay, at most L{MAX_DELAY} seconds, until one succeeds) and from
every delivery and recipient check afterwards.  Until the first answer it
offers nothing it could not keep.
"""

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger(namespace="smtpproxy.upstream")

RELEVANT = frozenset({"DSN", "SMTPUTF8", "SIZE", "8BITMIME", "AUTH", "PIPELINING", "XCLIENT"})
"""The EHLO keywords the proxy acts on."""

MAX_DELAY = 60
"""Seconds between two probes of an upstream that cannot be reached, at most."""


@frozen
class Capabilities:
    """
    @ivar keywords: the relevant EHLO keywords offered, upper-cased.
    @ivar size: the SIZE limit the upstream declared; C{0} is none declared.
    @ivar xclient: the XCLIENT attributes the upstream takes (C{ADDR}, ...).
    """

    keywords: frozenset = frozenset()
    size: int = 0
    xclient: frozenset = frozenset()

    @classmethod
    def from_ehlo(cls, response: bytes) -> "Capabilities":
        """Read an EHLO reply's text (its lines after the first are keywords)."""
        keywords, size, xclient = set(), 0, frozenset()
        for line in response.split(b"\n")[1:]:
            words = line.decode("ascii", "replace").upper().split()
            if words and words[0] in RELEVANT:
                keywords.add(words[0])
                if words[0] == "SIZE" and len(words) > 1 and words[1].isdigit():
                    size = int(words[1])
                if words[0] == "XCLIENT":
                    xclient = frozenset(words[1:])
        return cls(frozenset(keywords), size, xclient)

    def offers(self, keyword):
        return keyword in self.keywords

    def size_limit(self, own):
        """The smaller of the proxy's own limit and the upstream's (if it declared one)."""
        return min(own, self.size) if self.size else own

    def describe(self):
        words = sorted(self.keywords - {"SIZE"})
        if "SIZE" in self.keywords:
            words.append(f"SIZE {self.size}" if self.size else "SIZE")
        return " ".join(words) or "none of DSN, SMTPUTF8, SIZE, 8BITMIME"


class UpstreamCapabilities:
    """
    The upstream's capabilities as last seen, shared by all sessions.

    @param clock: for the probe's retries.
    @param probe: a callable returning a Deferred that fires with the
        upstream's L{Capabilities}, or fails (and has logged why).
    @ivar current: the last L{Capabilities} seen, or C{None} before any.
    """

    def __init__(self, clock, probe):
        self._clock = clock
        self._probe = probe
        self._delay = 1
        self._retry = None
        self._stopped = False
        self._waiting = []
        self.current = None

    def learn(self, capabilities):
        """A conversation with the upstream has shown what it offers now."""
        if capabilities != self.current:
            log.info("upstream offers {offer}", offer=capabilities.describe())
        self.current = capabilities
        waiting, self._waiting = self._waiting, []
        for known in waiting:
            known.callback(capabilities)

    def known(self):
        """A Deferred firing with the L{Capabilities} once there are any."""
        if self.current is not None:
            return succeed(self.current)
        known = Deferred()
        self._waiting.append(known)
        return known

    def start(self):
        """Probe the upstream (the proxy starts serving)."""
        self._stopped = False
        self._delay = 1
        self._attempt()

    def stop(self):
        """No more probing (the proxy stops serving); a probe under way ends by itself."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _attempt(self):
        self._retry = None
        self._probe().addCallbacks(self.learn, self._failed)

    def _failed(self, failure):
        if self.current is None and not self._stopped:
            self._retry = self._clock.callLater(self._delay, self._attempt)
            self._delay = min(self._delay * 2, MAX_DELAY)
