"""
The deployments of contrib/, for real: twistd on listening sockets it
inherits the way systemd passes them (contrib/smtpproxy.socket and
smtpproxy-submissions.socket), and HAProxy with contrib/haproxy.cfg in
front of the proxy's PROXY-protocol listeners (skipped without haproxy).
"""

import os
import shutil
import signal
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ProcessDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from smtpproxy import haproxy
from tests.support.certs import client_options
from tests.support.client import ScriptedClient, connect, data_block, send_mail
from tests.support.loopback import listen_loopback
from tests.support.mail import AUTH_PLAIN, MESSAGE
from tests.support.stack import PASSWORD, USER, Stack
from tests.support.twistd import ROOT, ChildProcess, twistd_command, twistd_environment, twistd_parts

RUNNING = "SIGTERM drains"  # twistd's log line once the proxy runs


def _listening(family, address):
    """A listening TCP socket, as systemd makes one from a .socket unit's ListenStream=."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        # BindIPv6Only=both: one socket for IPv6 and IPv4 clients.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((address, 0))
    sock.listen()
    return sock


@defer.inlineCallbacks
def _submit(client):
    """On a client past TLS and EHLO: log in and send L{MESSAGE}; the reply to its final dot."""
    yield client.command(AUTH_PLAIN, expect=235)
    yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
    yield client.command(b"RCPT TO:<bob@example.net>", expect=250)
    yield client.command(b"DATA", expect=354)
    client.send(data_block(MESSAGE))
    (reply,) = yield client.replies(1)
    return reply


@defer.inlineCallbacks
def _submit_implicit_tls(port, tls):
    """A whole submission on an implicit-TLS port (465 style); the reply to the final dot."""
    client = yield connect(reactor, port, tls=tls)
    try:
        yield client.command(b"EHLO client.example", expect=250)
        return (yield _submit(client))
    finally:
        yield client.close()


class SocketActivationTests(TestCase):
    """
    C{twistd -n smtpproxy --listen=systemd:...} on sockets this test binds
    and hands over as systemd does: as file descriptors 3 and up, named in
    C{LISTEN_FDNAMES}, with C{LISTEN_FDS} and C{LISTEN_PID}, the child's own
    pid (the systemd endpoint ignores sockets meant for another process).
    """

    def setUp(self):
        self.directory, self.certs, self.api, self.upstream = twistd_parts(self)
        # contrib's units listen on [::] for IPv6 and IPv4 alike (domain=INET6);
        # an IPv4 socket (domain=INET) is the other common case: one of each.
        # Both stay on loopback, and IPv4 clients reach both.
        self.submission = _listening(socket.AF_INET, "127.0.0.1")
        self.addCleanup(self.submission.close)
        self.submissions = _listening(socket.AF_INET6, "::ffff:127.0.0.1")
        self.addCleanup(self.submissions.close)

    def start(self):
        """Start twistd on the two sockets; fires once it runs, with (L{ChildProcess}, process)."""
        twistd = ChildProcess()
        command = twistd_command(
            "smtpproxy",
            "--listen=systemd:domain=INET:name=submission",
            "--listen_tls=systemd:domain=INET6:name=submissions",
            "--tohost=127.0.0.1", f"--toport={self.upstream.port}", f"--api={self.api.url}",
            f"--tls_cert={self.certs.cert_path}", f"--tls_key={self.certs.key_path}",
            "--hostname=proxy.test",
        )
        # The sockets go in the opposite order of the options, so only their
        # names can match them up.  exec keeps the shell's pid, so $$ is the
        # pid of the twistd that reads LISTEN_PID.
        process = reactor.spawnProcess(
            twistd, "/bin/sh",
            ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *command],
            env=twistd_environment(LISTEN_FDS="2", LISTEN_FDNAMES="submissions:submission"),
            path=self.directory,
            childFDs={0: "w", 1: "r", 2: "r",
                      3: self.submissions.fileno(), 4: self.submission.fileno()},
        )
        self.addCleanup(_kill, twistd, process)
        return twistd.logged(RUNNING).addCallback(lambda _: (twistd, process))

    @defer.inlineCallbacks
    def stop(self, twistd, process):
        """SIGTERM, as systemd stops a service; fails unless twistd exits with status 0."""
        process.signalProcess("TERM")
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)

    @defer.inlineCallbacks
    def test_mail_through_both_inherited_sockets(self):
        twistd, process = yield self.start()
        tls = client_options(self.certs)
        # Implicit TLS first: on a socket mixed up with the other, its
        # handshake meets a plain greeting and fails at once.
        implicit = yield _submit_implicit_tls(self.submissions.getsockname()[1], tls)
        starttls = yield send_mail(reactor, self.submission.getsockname()[1], tls, USER, PASSWORD,
                                   "alice@example.com", ["bob@example.net"], MESSAGE)
        self.assertEqual((starttls.code, implicit.code), (250, 250))
        self.assertEqual(len(self.upstream.messages), 2)
        yield self.stop(twistd, process)

    @defer.inlineCallbacks
    def test_client_connecting_during_a_restart_waits_for_the_next_proxy(self):
        """
        The sockets outlive the proxy (systemd keeps them): a client that
        connects while no proxy runs is queued, not refused, and the next
        proxy serves it.
        """
        first = yield self.start()
        yield self.stop(*first)
        waiting = connect(reactor, self.submission.getsockname()[1])
        self.assertNoResult(waiting)  # accepted by the kernel, greeted by nobody yet
        second = yield self.start()
        client = yield waiting
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(client_options(self.certs))
        yield client.command(b"EHLO client.example", expect=250)
        reply = yield _submit(client)
        yield client.close()
        self.assertEqual(reply.code, 250)
        yield self.stop(*second)

    @defer.inlineCallbacks
    def test_processes_sharing_the_sockets_each_serve_and_drain_alone(self):
        """
        contrib/smtpproxy@.service: several proxies on the same two sockets.
        A client goes to whichever process is waiting in accept (one that is
        busy, here one stopped with SIGSTOP, is not); while one drains, the
        other takes every new client.
        """
        first, second = yield defer.gatherResults([self.start(), self.start()])
        for busy, free in ((second, first), (first, second)):
            busy[1].signalProcess(signal.SIGSTOP)
            before = _delivered(free[0])
            reply = yield self.submit()
            busy[1].signalProcess(signal.SIGCONT)
            self.assertEqual((reply.code, _delivered(free[0])), (250, before + 1))
        first[1].signalProcess("TERM")
        yield first[0].ended
        for _ in range(3):
            reply = yield self.submit()
            self.assertEqual(reply.code, 250)
        self.assertEqual((_delivered(first[0]), _delivered(second[0])), (1, 4))
        self.assertEqual(len(self.upstream.messages), 5)
        yield self.stop(*second)

    def submit(self):
        return send_mail(reactor, self.submission.getsockname()[1], client_options(self.certs),
                         USER, PASSWORD, "alice@example.com", ["bob@example.net"], MESSAGE)


def _delivered(twistd):
    """How many messages a proxy's log says it delivered."""
    return (twistd.log + twistd.output).count("message delivered")


def _kill(child, process):
    """Cleanup: end C{process} unless it has ended; fires once it has, so the reactor is clean."""
    if not child.ended.called:
        process.signalProcess("KILL")
    return child.ended


def _haproxy():
    """The haproxy program, or None; Debian puts it in /usr/sbin, off a user's PATH."""
    return shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


# contrib/haproxy.cfg without its global section (system logging, chroot,
# user: for a real balancer), run with this one instead: log to stderr,
# where the test reads the health checks.
TEST_GLOBAL = "global\n    log stderr format raw local0 info\n"

CLIENT_ADDRESS = "127.0.0.9"  # the client's source, told apart from HAProxy's 127.0.0.1


class HAProxyTests(TestCase):
    """
    HAProxy with contrib/haproxy.cfg, in front of the proxy's PROXY-protocol
    listeners (what C{--listen=haproxy:tcp:10587:backlog=511} and
    C{--listen_tls=haproxy:tcp:10465:backlog=511} serve): its SMTP health checks pass,
    and mail sent through both frontends arrives with the API seeing the
    real client's address.
    """

    if _haproxy() is None:
        skip = "haproxy is not installed"

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)
        factory = self.stack.factory
        implicit = TLSMemoryBIOFactory(self.stack.config.tls, False, factory)
        # Served as twistd serves a haproxy: listener (its endpoint aside: on loopback here).
        self.backends = [
            listen_loopback(reactor, haproxy.server(reactor, "haproxy:tcp:0", served, 30)[1])
            for served in (factory, implicit)
        ]
        for backend in self.backends:
            self.addCleanup(backend.close)
        # HAProxy's frontends: sockets bound here and inherited (bind fd@N),
        # so clients can connect before HAProxy has started.
        self.frontends = [_listening(socket.AF_INET, "127.0.0.1") for _ in range(2)]
        for frontend in self.frontends:
            self.addCleanup(frontend.close)

    def configuration(self):
        """contrib/haproxy.cfg pointed at this test's sockets, each change checked to apply."""
        with open(os.path.join(ROOT, "contrib", "haproxy.cfg"), encoding="utf-8") as f:
            text = f.read()
        text = TEST_GLOBAL + text[text.index("\ndefaults"):]
        submission, submissions = (backend.port for backend in self.backends)
        changes = [
            ("    bind :587\n", "    bind fd@3\n"),
            ("    bind :::587 v6only\n", ""),
            ("    bind :465\n", "    bind fd@4\n"),
            ("    bind :::465 v6only\n", ""),
            # Both servers are the one proxy of this test.
            ("192.0.2.11:10587", f"127.0.0.1:{submission}"),
            ("192.0.2.12:10587", f"127.0.0.1:{submission}"),
            ("192.0.2.11:10465", f"127.0.0.1:{submissions}"),
            ("192.0.2.12:10465", f"127.0.0.1:{submissions}"),
            # Check at once rather than within 5 s.
            (" inter 5s ", " inter 100ms "),
        ]
        for old, new in changes:
            self.assertIn(old, text, "contrib/haproxy.cfg changed: update this test")
            text = text.replace(old, new)
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def start_haproxy(self):
        """
        Run HAProxy in the foreground; fires once both servers passed their
        first SMTP health check, fails if one did not.
        """
        child = ChildProcess()
        program = _haproxy()
        process = reactor.spawnProcess(
            child, program, [program, "-db", "-f", self.configuration()],
            env={},
            childFDs={0: "w", 1: "r", 2: "r",
                      3: self.frontends[0].fileno(), 4: self.frontends[1].fileno()},
        )
        self.addCleanup(_kill, child, process)
        # option log-health-checks logs each server's first result, good or bad.
        for server in ("smtpproxy1", "smtpproxy2"):
            result = f"Health check for server smtpproxy_submission/{server} "
            yield child.logged(result)
            line = child.log[child.log.index(result):].partition("\n")[0]
            self.assertIn(" succeeded, ", line)

    @defer.inlineCallbacks
    def connect(self, frontend, tls=None):
        """
        A client from L{CLIENT_ADDRESS} at C{frontend}, TLS from the start
        with C{tls}; fires after the greeting.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", frontend.getsockname()[1],
                                      bindAddress=(CLIENT_ADDRESS, 0))
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        client = yield connectProtocol(endpoint, ScriptedClient())
        (greeting,) = yield client.replies(1)
        self.assertEqual(greeting.code, 220)
        return client

    @defer.inlineCallbacks
    def test_health_checks_pass_and_mail_goes_through_both_frontends(self):
        yield self.start_haproxy()
        starttls = yield self.connect(self.frontends[0])
        yield starttls.command(b"EHLO client.example", expect=250)
        yield starttls.starttls(self.stack.client_tls)
        yield starttls.command(b"EHLO client.example", expect=250)
        implicit = yield self.connect(self.frontends[1], tls=self.stack.client_tls)
        yield implicit.command(b"EHLO client.example", expect=250)
        replies = []
        for client in (starttls, implicit):
            replies.append((yield _submit(client)).code)
            yield client.close()
        self.assertEqual(replies, [250, 250])
        self.assertEqual([r.json["client_address"] for r in self.stack.api.requests],
                         [CLIENT_ADDRESS, CLIENT_ADDRESS])
        self.assertEqual(len(self.stack.upstream.messages), 2)
