# -*- test-case-name: tests.test_descriptors -*-
"""
Give memory the proxy no longer uses back to the system.

A flood of clients (say, a thousand sending header lines they never end)
makes the heap grow; when they leave, CPython frees the objects, but glibc
keeps most of the freed pages mapped, so the process stays large until it
restarts.  Measured with 990 such clients: 39 MiB before, 288 MiB during,
162 MiB after they left, and 58 MiB once C{malloc_trim(0)} had run.  So the
twistd service calls it once a minute (L{TRIM_INTERVAL}); where the C
library has no C{malloc_trim} (not glibc) nothing is done.
"""

import ctypes
import ctypes.util

from twisted.internet.task import LoopingCall

TRIM_INTERVAL = 60
"""Seconds between two calls of C{malloc_trim}."""


def _malloc_trim():
    """glibc's C{malloc_trim}, or C{None} where there is none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def trimmer(clock):
    """
    A C{LoopingCall} (on C{clock}) that returns free heap pages to the
    system, or C{None} where that cannot be done.
    """
    trim = _malloc_trim()
    if trim is None:
        return None
    call = LoopingCall(trim, 0)
    call.clock = clock
    return call
