"""
Resource bounds (issue 3): slow clients do not starve the others, and a message of any size
passes with the proxy's memory flat.

Everything runs in this one process (clients, proxy, fake API and upstream), so the memory
test makes the client generate the message as the connection takes it and the upstream keep
only a digest (L{tests.support.streams}): what remains is the proxy's own footprint.

The 1 GiB run is slow and skipped by default; run it with::

    SMTPPROXY_SLOW=1 .venv/bin/python -m twisted.trial tests.test_resources
"""

import gc
import os
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from smtpproxy import Limits
from smtpproxy.headers import UNCOUNTED
from tests.support.client import connect, start_data, submit
from tests.support.mail import MESSAGE, POLICY_HEADER
from tests.support.stack import Stack
from tests.support.streams import DigestCollector, MessageStream

MiB = 1024 * 1024
GiB = 1024 * MiB

SENDER, RECIPIENT = b"alice@example.com", b"bob@example.net"

MEMORY_BOUND = 64 * MiB
"""
Peak RSS growth allowed while a big message passes.  The proxy holds a few chunks of it at a
time; the bound leaves room for the interpreter's allocator, far below any message size
tested, so a proxy that buffers the message (or a tenth of it) fails.
"""


class SlowClientTests(TestCase):
    """
    200 clients that dribble bytes and never finish a line, at every stage a slow or
    malicious client can stop in: before TLS, in the TLS handshake, at a command after
    AUTH, and inside a message's header block.
    """

    SLOW = 200
    WAVE = 40
    """
    Clients connected at once.  The test's loopback listener has Twisted's default backlog
    of 50, and connections over it wait for the kernel's SYN retry (a second or more):
    connecting in waves keeps the setup fast; the slow clients all stay connected.
    """

    def setUp(self):
        limits = Limits(max_connections=2 * self.SLOW, max_connections_per_ip=2 * self.SLOW)
        self.stack = Stack(reactor, self.mktemp(), limits)
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def slow_client(self, stage):
        """A client stopped at C{stage}; the line it will dribble, a byte at a time."""
        if stage == "handshake":
            client = yield connect(reactor, self.stack.port)
            yield client.command(b"STARTTLS", expect=220)
            return client, b""  # it never starts TLS: the proxy waits in the handshake
        if stage == "plain":
            client = yield connect(reactor, self.stack.port)
            return client, b"EHLO slow.example.com"
        client = yield self.stack.session()
        if stage == "command":
            return client, b"MAIL FROM:<slow@example.com>"
        yield start_data(client, SENDER, RECIPIENT)
        return client, b"Subject: a header that never ends"

    @defer.inlineCallbacks
    def test_slow_clients_do_not_block_a_normal_one(self):
        stages = ["plain", "handshake", "command", "header"] * (self.WAVE // 4)
        slow = []
        for _ in range(self.SLOW // len(stages)):
            wave = yield defer.gatherResults([self.slow_client(stage) for stage in stages])
            slow.extend(wave)
            for client, _ in wave:
                self.addCleanup(client.close)

        def dribble(step):
            """Each slow client sends the next byte of its line, when it has one."""
            for client, line in slow:
                if step < len(line):
                    client.send(line[step:step + 1])

        heard = [len(client.received) for client, _ in slow]
        dribble(0)
        normal = yield self.stack.session()
        self.addCleanup(normal.close)
        dribble(1)
        reply = yield submit(normal, SENDER, RECIPIENT, MESSAGE)
        dribble(2)
        yield normal.command(b"NOOP", expect=250)

        self.assertEqual(reply.code, 250)
        self.assertEqual(len(self.stack.upstream.messages), 1)
        self.assertEqual([len(client.received) for client, _ in slow], heard,
                         "a slow client heard something for an unfinished line")
        self.assertTrue(all(client.transport.connected for client, _ in slow),
                        "a slow client was cut off")


def _status(field):
    """A C{/proc/self/status} field in bytes (VmRSS: now, VmHWM: the peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    """Make VmHWM the current RSS (Linux 4.0+), so a later peak is this test's alone."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class BigMessageTests(TestCase):
    def setUp(self):
        try:
            _reset_peak()
            _status("VmHWM")
        except (OSError, KeyError):
            raise SkipTest("needs Linux /proc/self/status and clear_refs to measure peak RSS")
        self.stack = Stack(reactor, self.mktemp(), Limits(max_message_size=2 * GiB))
        self.addCleanup(self.stack.close)
        self.stack.upstream.collector = DigestCollector

    @defer.inlineCallbacks
    def stream(self, size):
        """
        Send a generated message of C{size} bytes through the proxy; check that the upstream
        got every byte and that the process's peak RSS grew by less than L{MEMORY_BOUND}.
        """
        client = yield self.stack.session()
        self.addCleanup(client.close)
        yield start_data(client, SENDER, RECIPIENT)
        message = MessageStream(size, b"From: alice@example.com\r\nSubject: big\r\n", POLICY_HEADER)

        gc.collect()
        _reset_peak()
        before = _status("VmRSS")
        started = time.monotonic()
        yield message.write_to(client.transport)
        (reply,) = yield client.replies(1)
        seconds = time.monotonic() - started
        growth = _status("VmHWM") - before

        print(f"\n{size / MiB:.0f} MiB message through the proxy: {seconds:.1f} s, "
              f"{size / MiB / seconds:.0f} MiB/s, peak RSS growth {growth / MiB:.1f} MiB")
        self.assertEqual(reply.code, 250)
        (received,) = self.stack.upstream.messages
        self.assertEqual(received.data, message.expected())
        self.assertLess(growth, MEMORY_BOUND)

    def test_100_mib(self):
        return self.stream(100 * MiB)

    def test_1_gib(self):
        if os.environ.get("SMTPPROXY_SLOW") != "1":
            raise SkipTest("slow (15 s or more): set SMTPPROXY_SLOW=1 to run it")
        return self.stream(GiB)


class HeaderMemoryTests(TestCase):
    """
    --header_memory (issue 10): header blocks held by all clients at once are bounded; a
    message past the budget gets 452 4.3.1, and once that memory is freed the next one passes.
    The first bytes of each block (headers.UNCOUNTED) are free, so a full budget does not
    refuse ordinary mail.
    """

    def setUp(self):
        limits = Limits(max_header_size=256 * 1024, header_memory=100000)
        self.stack = Stack(reactor, self.mktemp(), limits)
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def test_budget_refuses_then_recovers(self):
        hog = yield self.stack.session()
        yield start_data(hog, SENDER, RECIPIENT)
        hog.send(b"X-Long: a\r\n" * ((100000 + UNCOUNTED - 10) // 11))  # the budget but 18
        late = yield self.stack.session()
        big = b"X-Big: " + b"b" * UNCOUNTED + b"\r\n" + MESSAGE
        reply = yield submit(late, SENDER, RECIPIENT, big)
        self.assertEqual(str(reply), "452 4.3.1 Insufficient system storage, try again later")
        reply = yield submit(late, SENDER, RECIPIENT, MESSAGE)
        self.assertEqual(reply.code, 250)  # an ordinary header block is never refused
        hog.send(b"\r\nbody\r\n.\r\n")
        (done,) = yield hog.replies(1)
        self.assertEqual(done.code, 250)
        self.assertEqual(self.stack.factory.header_budget.used, 0)
        reply = yield submit(late, SENDER, RECIPIENT, big)
        self.assertEqual(reply.code, 250)
