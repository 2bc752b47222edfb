"""
The header-block attack of issue 10, scaled down, against the real twistd:
logged-in clients that send header lines and never end the block hold no
more than the header budget, measured as the proxy's RSS from /proc, and
a normal client is served meanwhile.  C{SMTPPROXY_SLOW=1} runs it at the
issue's size (990 connections, 1 MiB each, default limits).
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone
from twisted.trial.unittest import TestCase

from tests.support.certs import client_options
from tests.support.client import connect, send_mail
from tests.support.stack import PASSWORD, USER
from tests.support.twistd import free_port, spawn_proxy, twistd_parts

SLOW = bool(os.environ.get("SMTPPROXY_SLOW"))
CLIENTS, HEADER = (990, 1024 * 1024) if SLOW else (100, 256 * 1024)
BUDGET = 32 * 1024 * 1024 if SLOW else 4 * 1024 * 1024
LINE = b"X-Junk: " + b"x" * 1014 + b"\r\n"


def rss(pid):
    """The process's resident memory in bytes, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class HeaderFloodTests(TestCase):
    timeout = 600 if SLOW else 60

    @defer.inlineCallbacks
    def attacker(self, tls):
        client = yield connect(reactor, self.port)
        yield client.command(b"EHLO attacker.example", expect=250)
        yield client.starttls(tls)
        yield client.command(b"AUTH PLAIN AGF0dGFja2VyAHdyb25nLXBhc3N3b3Jk", expect=235)
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        yield client.command(b"RCPT TO:<b@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(LINE * (HEADER // len(LINE)))
        return client

    @defer.inlineCallbacks
    def test_header_flood_holds_the_budget_and_serves_others(self):
        parts = directory, certs, api, upstream = twistd_parts(self)
        self.port = free_port()
        extra = [] if SLOW else [f"--header_memory={BUDGET}", f"--max_header_size={2 * HEADER}"]
        process, twistd = spawn_proxy(self, parts, self.port, *extra)
        yield twistd.logged("SIGTERM drains")
        tls = client_options(certs)
        before = rss(process.pid)
        attackers = yield defer.gatherResults([self.attacker(tls) for _ in range(CLIENTS)])
        # A normal message goes through only once the proxy has read all that came before it.
        reply = yield send_mail(reactor, self.port, tls, USER, PASSWORD,
                                "alice@example.com", ["bob@example.net"], b"Subject: hi\r\n\r\nx\r\n")
        self.assertEqual(reply.code, 250)
        during = rss(process.pid)
        # Each TLS session, its buffers and the heap they leave cost under 300 KiB besides.
        self.assertLess(during - before, BUDGET + CLIENTS * 300 * 1024,
                        f"RSS {before >> 20} MiB before, {during >> 20} MiB during")
        for client in attackers:
            client.transport.abortConnection()
        yield defer.gatherResults([client.wait_closed() for client in attackers])
        process.signalProcess("TERM")
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
