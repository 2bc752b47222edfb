# -*- test-case-name: tests.test_lockout -*-
"""
Pure: authentication failures per client address (C{--max_auth_failures}
within C{--auth_failure_window}), so that guessing passwords costs the
guesser.

Failures are counted in a fixed window that starts at an address's first
failure; the failure that reaches the maximum locks the address for one
whole window from then on.  A fixed window needs three numbers per
address, whatever the maximum; it lets a patient guesser make at most
C{2 * (max - 1)} guesses around a window's edge without a lock, which is
the same order of cost.

The table is bounded: at L{CAPACITY} addresses, the one whose last failure
is oldest is forgotten to make room (a lock included: forgetting it early
takes failures from more than L{CAPACITY} other addresses within one
window, and whoever has that many addresses is not stopped by a
per-address count anyway).  Entries whose window or lock has passed are
dropped when next looked at.
"""

from collections import OrderedDict

CAPACITY = 100_000
"""Addresses remembered at most (a few MB in all)."""


class _Entry:
    __slots__ = ("start", "count", "until")

    def __init__(self, start):
        self.start = start
        self.count = 0
        self.until = None


class FailureTable:
    """
    Failed logins by client address.

    @param clock: an C{IReactorTime}: only its C{seconds()} is used.
    """

    def __init__(self, max_failures, window, clock, capacity=CAPACITY):
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._capacity = capacity
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def locked(self, address) -> bool:
        """Whether C{address} is locked out now."""
        entry = self._current(address, self._clock.seconds())
        return entry is not None and entry.until is not None

    def failed(self, address) -> bool:
        """
        Count a failed login from C{address}.

        @return: whether this failure locked the address: true once per
            lock, so that the caller logs and counts each lock once.
        """
        now = self._clock.seconds()
        entry = self._current(address, now)
        if entry is None:
            entry = self._entries[address] = _Entry(now)
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(address)
        entry.count += 1
        if entry.until is None and entry.count >= self._max:
            entry.until = now + self._window
            return True
        return False

    def _current(self, address, now):
        """C{address}'s entry, unless its window or lock has passed (then it is dropped)."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        end = entry.start + self._window if entry.until is None else entry.until
        if now >= end:
            del self._entries[address]
            return None
        return entry
