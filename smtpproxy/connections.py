# -*- test-case-name: tests.test_limits -*-
"""
Connection limits (C{--max_connections}, C{--max_connections_per_ip}).

A client over a limit is refused before the greeting, so it costs one
accept and one reply line, and the sessions already admitted never notice.
Only admitted connections are counted, and an address leaves the table
when its last connection closes: the table holds at most
C{max_connections} addresses whatever an attacker does.  Clients in
C{limit_exempt} (the proxy's own host by default, as Postfix exempts
C{$mynetworks}) count toward C{max_connections} only: an application
server next door that keeps many connections busy would otherwise be
refused now and then, since a connection it has closed is still counted
until the proxy gets round to noticing.

Refusals come in floods exactly when they matter, so they are logged as a
summary (L{smtpproxy.reports}): the first refusal at once, then at most one
line per L{REPORT_INTERVAL} seconds, counting what was refused since the
last line.
"""

from collections import Counter

from twisted.logger import Logger

from smtpproxy import replies
from smtpproxy.reports import REPORT_INTERVAL, FloodReport

log = Logger()


class ConnectionTable:
    """
    The open client connections, counted in all and per address.

    @param limits: the L{smtpproxy.config.Limits}.
    @param clock: an C{IReactorTime}, for the log summary only.
    @ivar refusals: the L{FloodReport} of refused connections.
    @param metrics: the L{smtpproxy.metrics.Metrics} that count refusals.
    """

    def __init__(self, limits, clock, metrics):
        self._limits = limits
        self._max = limits.max_connections
        self._max_per_address = limits.max_connections_per_ip
        self._clock = clock
        self._metrics = metrics
        self._per_address = Counter()
        self.total = 0
        self.refusals = FloodReport(clock, _log_refusals)

    @property
    def addresses(self):
        """How many distinct addresses have a connection open."""
        return len(self._per_address)

    def admit(self, address):
        """
        Count a new connection from C{address}, or refuse it.

        @return: C{None} when admitted (call L{release} when it closes), or
            the L{smtpproxy.replies.Reply} to send before closing it.
        """
        if self.total >= self._max:
            return self._refuse(address, "max_connections", self._max)
        exempt = self._limits.exempt(address)
        if not exempt and self._per_address[address] >= self._max_per_address:
            return self._refuse(address, "max_connections_per_ip", self._max_per_address)
        self.total += 1
        if not exempt:
            self._per_address[address] += 1
        return None

    def release(self, address):
        """An admitted connection from C{address} has closed."""
        self.total -= 1
        if self._limits.exempt(address):
            return
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]

    def _refuse(self, address, name, limit):
        self._metrics.connections_refused.labels(name).inc()
        self.refusals.add(f"{name}={limit}", address)
        return replies.TOO_MANY_CONNECTIONS


def _log_refusals(counts, address):
    log.warn(
        "refused {count} connection(s) at the limit ({limits}); "
        "the last from {address}; next report in {interval} s at the earliest",
        count=counts.total(),
        limits=", ".join(f"{n} at {name}" for name, n in sorted(counts.items())),
        address=address,
        interval=REPORT_INTERVAL,
    )
