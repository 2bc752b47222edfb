# -*- test-case-name: tests.test_refapi -*-
"""
Password hashes for the policy file: scrypt from the standard library, in
one self-describing line C{scrypt$n$r$p$salt$hash} (salt and hash in
base64), so old lines keep working when the defaults are raised and no
dependency is needed.

The defaults (n=2**15, r=8, p=1: 32 MiB and tens of milliseconds per check)
cost an attacker who steals the file that much per guess too.
"""

import base64
import binascii
import hashlib
import hmac
import os

from attrs import field, frozen

N, R, P = 2**15, 8, 1
SALT_BYTES = 16
DIGEST_BYTES = 32
MAX_MEMORY = 256 * 1024 * 1024


class MalformedHash(ValueError):
    """A password line that is not a usable scrypt hash; says which part."""


@frozen
class PasswordHash:
    """One parsed C{scrypt$...} line; never shown in C{repr} beyond its cost."""

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @classmethod
    def parse(cls, line: str) -> "PasswordHash":
        """Read a line made by L{make_hash}; L{MalformedHash} says what is wrong."""
        parts = line.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise MalformedHash("not a scrypt$n$r$p$salt$hash line")
        try:
            n, r, p = (int(part) for part in parts[1:4])
            salt, digest = (base64.b64decode(part, validate=True) for part in parts[4:])
        except (ValueError, binascii.Error):
            raise MalformedHash("n, r and p must be integers, salt and hash base64") from None
        if r < 1 or p < 1 or n < 2 or n & (n - 1) or n >= 2 ** (16 * r):
            raise MalformedHash("r and p must be at least 1, n a power of two below 2**(16r)")
        if _memory(n, r, p) > MAX_MEMORY:
            raise MalformedHash(f"n and r need more than {MAX_MEMORY >> 20} MiB")
        if not salt or len(digest) < 16:
            raise MalformedHash("salt empty or hash shorter than 16 bytes")
        return cls(n, r, p, salt, digest)

    def verify(self, password: str) -> bool:
        """Whether C{password} matches, compared in constant time."""
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p,
                                           len(self.digest)), self.digest)

    def line(self) -> str:
        """The C{scrypt$...} text for the policy file."""
        encoded = (base64.b64encode(b).decode("ascii") for b in (self.salt, self.digest))
        return "$".join(["scrypt", str(self.n), str(self.r), str(self.p), *encoded])


def make_hash(password: str, n: int = N, r: int = R, p: int = P) -> PasswordHash:
    """A new hash of C{password} with a random salt."""
    salt = os.urandom(SALT_BYTES)
    return PasswordHash(n, r, p, salt, _scrypt(password, salt, n, r, p, DIGEST_BYTES))


def decoy() -> PasswordHash:
    """
    A hash no password matches (random salt and digest) at the default cost:
    checked for unknown users so that they take as long as a wrong password.
    """
    return PasswordHash(N, R, P, os.urandom(SALT_BYTES), os.urandom(DIGEST_BYTES))


def _memory(n, r, p):
    """What OpenSSL's scrypt allocates, with room to spare (128·r·(n+p+2) bytes)."""
    return 128 * r * (n + p + 2)


def _scrypt(password, salt, n, r, p, length):
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=_memory(n, r, p) + 1024 * 1024, dklen=length)
