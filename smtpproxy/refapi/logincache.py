# -*- test-case-name: tests.test_refapi -*-
"""
Recently verified logins, so that a login checked at AUTH and the
messages sent right after it cost one scrypt, not one each.

Only a keyed hash of each (username, password) pair is kept: HMAC-SHA256
under a random key made when the process starts, in memory only, for
L{TTL} seconds, at most L{CAPACITY} entries.  Failed checks are never
kept, so every wrong password still costs its scrypt.

What this gives up, honestly: scrypt is slow so that whoever steals the
policy file must spend that much per guess.  Whoever can read this
process's memory gets the key and the entries, and can test guesses
against them at HMAC speed, for the passwords used in the last few
minutes.  But that reader can equally read those passwords from the
requests as they arrive, so the cache adds little to what such an
attacker has, while it saves a scrypt (tens of milliseconds of CPU, 32 MiB)
on every message of a logged-in client.  Nothing is written anywhere; a
restart forgets everything; a reload of the policy file clears the cache
(a changed password must not keep working).
"""

import hashlib
import hmac
import json
import os
from collections import OrderedDict

TTL = 300
"""Seconds a successful check is trusted: a client's login and its burst of messages."""

CAPACITY = 10000
"""Entries kept at most; the oldest goes first."""


class LoginCache:
    """
    @param clock: an C{IReactorTime} for the expiry.
    """

    def __init__(self, clock, ttl=TTL, capacity=CAPACITY):
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        self._key = os.urandom(32)
        self._expiry = OrderedDict()

    def __len__(self):
        return len(self._expiry)

    def verified(self, username: str, password: str) -> bool:
        """Whether this pair passed a check less than C{ttl} seconds ago."""
        key = self._digest(username, password)
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if self._clock.seconds() >= expiry:
            del self._expiry[key]
            return False
        return True

    def add(self, username: str, password: str) -> None:
        """Remember that this pair has just passed a check."""
        key = self._digest(username, password)
        self._expiry[key] = self._clock.seconds() + self._ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self._capacity:
            self._expiry.popitem(last=False)

    def clear(self) -> None:
        self._expiry.clear()

    def _digest(self, username, password):
        # JSON keeps the pair unambiguous whatever characters either holds.
        pair = json.dumps([username, password]).encode("ascii")
        return hmac.new(self._key, pair, hashlib.sha256).digest()
