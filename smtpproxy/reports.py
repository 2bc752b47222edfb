# -*- test-case-name: tests.test_limits -*-
"""
Log lines about events that come in floods (connections refused at a limit,
failed TLS handshakes): the first one at once, then at most one line per
interval, counting what came since.

The count is written by a timer when the interval ends, not when the next
event comes: otherwise the tail of a flood would be told only at the start
of the next one, minutes or days later.
"""

from collections import Counter

REPORT_INTERVAL = 60
"""Seconds between two log lines of one L{FloodReport}."""


class FloodReport:
    """
    Counts events by kind and reports them through C{emit}.

    @param clock: an C{IReactorTime}, for the timer.
    @param emit: called as C{emit(counts, last)} for each line: C{counts} a
        C{Counter} of the events by kind since the last line (never empty),
        C{last} the detail of the latest one (say, the client's address).
    @param interval: seconds between two lines.
    """

    def __init__(self, clock, emit, interval=REPORT_INTERVAL):
        self._clock = clock
        self._emit = emit
        self.interval = interval
        self._counts = Counter()
        self._last = None
        self._timer = None

    def add(self, kind, detail):
        """One event of C{kind}; C{detail} stands for it if it is the last one."""
        self._counts[kind] += 1
        self._last = detail
        if self._timer is None:
            self._flush()

    def _flush(self):
        """Write what has come since the last line, if anything, and wait an interval."""
        if not self._counts:
            self._timer = None
            return
        self._write()
        self._timer = self._clock.callLater(self.interval, self._flush)

    def _write(self):
        counts, self._counts = self._counts, Counter()
        self._emit(counts, self._last)

    def stop(self):
        """Write what is still counted and stop the timer (the proxy is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counts:
            self._write()
