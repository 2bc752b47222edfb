"""
Graceful drain (SIGTERM, issue 3): idle sessions get 421 4.3.2 at once,
messages past their final dot are finished and their clients hear the real
outcome, nothing new is accepted, and the drain ends by --drain_timeout at
the latest.  In memory with a clock, end to end over loopback, through
ProxyService, and once through a real twistd process.
"""

import os
import shutil
import signal
import sys

from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    ProcessDone,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import tap
from tests.support.api import start_api
from tests.support.certs import client_options, make_certificates
from tests.support.client import connect, data_block, send_mail, start_data
from tests.support.mail import AUTH_PLAIN, MESSAGE
from tests.support.stack import PASSWORD, USER, Stack, allow
from tests.support.twistd import ChildProcess, free_port, twistd_command, twistd_environment
from tests.support.upstream import END_OF_DATA, start_upstream
from tests.support.session import QUEUED, SessionTestCase, TLSStringTransport

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
HELD = 20


class SessionDrainTests(SessionTestCase):
    def lose(self):
        self.session.connectionLost(Failure(ConnectionDone()))

    def test_idle_session_is_told_and_closed(self):
        self.tls()
        self.transport.clear()
        drained = self.factory.drain(30)
        self.assertEqual(self.transport.value().decode(), SHUTTING_DOWN + "\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(drained)
        self.lose()
        self.successResultOf(drained)

    def test_mid_data_session_finishes_its_message_then_421(self):
        """docs/protocol.rst section 6: a transaction in flight is finished, not cut."""
        self.envelope()
        self.send(b"DATA\r\nSubject: half\r\n\r\nsome of the bo")
        self.transport.clear()
        drained = self.factory.drain(30)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.send(b"dy\r\n.\r\n"),
                         ["250 2.0.0 Ok: queued as ABC", SHUTTING_DOWN])
        self.assertEqual(len(self.factory.deliveries), 1)
        self.lose()
        self.successResultOf(drained)

    def test_mid_data_session_that_never_ends_is_cut_off(self):
        """At the drain timeout: no reply, so the client resends; nothing delivered."""
        self.envelope()
        self.send(b"DATA\r\nSubject: half\r\n\r\nsome of the bo")
        self.factory.drain(30)
        self.clock.advance(30)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.factory.deliveries, [])

    def test_message_in_flight_gets_its_outcome_then_421(self):
        self.factory.outcome = defer.Deferred()
        self.envelope()
        self.send(b"DATA\r\n" + data_block(MESSAGE) + b"QUIT\r\n")
        self.transport.clear()
        drained = self.factory.drain(30)
        self.clock.advance(29)
        self.assertEqual(self.transport.value(), b"")
        self.factory.outcome.callback(QUEUED)
        self.assertEqual(self.transport.value().decode(),
                         "250 2.0.0 Ok: queued as ABC\r\n" + SHUTTING_DOWN + "\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.successResultOf(drained)

    def test_drain_timeout_cuts_off(self):
        self.factory.outcome = defer.Deferred()
        self.envelope()
        self.send(b"DATA\r\n" + data_block(MESSAGE))
        drained = self.factory.drain(30)
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.lose()
        self.successResultOf(drained)

    def test_new_connection_while_draining(self):
        self.lose()
        self.successResultOf(self.factory.drain(30))
        late = self.factory.buildProtocol(None)
        transport = TLSStringTransport()
        late.makeConnection(transport)
        self.assertEqual(transport.value().decode(), SHUTTING_DOWN + "\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.connections.total, 0)

    def test_no_session(self):
        self.lose()
        self.successResultOf(self.factory.drain(30))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EndToEndDrainTests(TestCase):
    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def test_delivery_finishes_idle_session_is_closed(self):
        upstream = self.stack.upstream
        sender = yield self.stack.session()
        idle = yield self.stack.session()
        reached = upstream.stall(END_OF_DATA)
        yield sender.command(b"MAIL FROM:<alice@example.com>", expect=250)
        yield sender.command(b"RCPT TO:<bob@example.net>", expect=250)
        yield sender.command(b"DATA", expect=354)
        sender.send(data_block(MESSAGE))
        yield reached
        drained = self.stack.factory.drain(30)
        (told,) = yield idle.replies(1)
        self.assertEqual(str(told), SHUTTING_DOWN)
        yield idle.wait_closed()
        self.assertNoResult(drained)
        upstream.release()
        outcome, last = yield sender.replies(2)
        self.assertEqual((outcome.code, str(last)), (250, SHUTTING_DOWN))
        yield sender.wait_closed()
        yield drained
        self.assertEqual(len(upstream.messages), 1)


    @defer.inlineCallbacks
    def test_cut_off_withdraws_a_delivery_before_its_final_dot(self):
        """The client hears nothing and sends again: the upstream must not have it."""
        upstream = self.stack.upstream
        sender = yield self.stack.session()
        reached = upstream.stall("DATA")
        yield start_data(sender, b"alice@example.com", b"bob@example.net")
        sender.send(data_block(MESSAGE))
        yield reached
        drained = self.stack.factory.drain(30)
        self.stack.factory.cut_off()
        yield sender.wait_closed()
        yield drained
        upstream.release()
        yield upstream.wait_idle()
        self.assertEqual(upstream.messages, [])


class _Child(Service):
    """Stands for a child service (the background checks) whose stop takes a while."""

    def __init__(self):
        self.stopped = defer.Deferred()

    def stopService(self):
        super().stopService()
        return self.stopped


class _Proxy:
    """Stands for L{smtpproxy.proxy.Proxy}: records its drain and close."""

    def __init__(self):
        self.calls = []
        self.drained = defer.Deferred()

    def drain(self, timeout):
        self.calls.append(("drain", timeout))
        return self.drained

    def close(self):
        self.calls.append(("close",))
        return defer.succeed(None)


class ServiceTests(SynchronousTestCase):
    def test_children_then_drain_then_close(self):
        proxy = _Proxy()
        service = tap.ProxyService(proxy, None, None, reactor, 7.5)
        child = _Child()
        child.setServiceParent(service)
        stopped = service.stopService()
        self.assertEqual(proxy.calls, [])
        child.stopped.callback(None)
        self.assertEqual(proxy.calls, [("drain", 7.5)])
        self.assertNoResult(stopped)
        proxy.drained.callback(None)
        self.assertEqual(proxy.calls, [("drain", 7.5), ("close",)])
        self.successResultOf(stopped)


class TwistdTests(TestCase):
    """
    The real thing: C{twistd -n smtpproxy} from this checkout as a child
    process, sent SIGHUP and SIGTERM.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "old"))
        os.makedirs(os.path.join(self.directory, "new"))
        self.certs = make_certificates(os.path.join(self.directory, "old"))
        self.api = start_api(reactor, allow)
        self.addCleanup(self.api.close)
        self.upstream = start_upstream(reactor)
        self.addCleanup(self.upstream.close)

    def start(self, *extra):
        """Start twistd; a Deferred firing with its L{ChildProcess} once it runs."""
        self.port = free_port()
        twistd = ChildProcess()
        self.process = reactor.spawnProcess(
            twistd, sys.executable,
            twistd_command(
                "smtpproxy", f"--listen=127.0.0.1:{self.port}",
                "--tohost=127.0.0.1", f"--toport={self.upstream.port}", f"--api={self.api.url}",
                f"--tls_cert={self.certs.cert_path}", f"--tls_key={self.certs.key_path}",
                "--hostname=proxy.test", *extra),
            env=twistd_environment(), path=self.directory,
        )
        self.addCleanup(lambda: twistd.ended.called or self.process.signalProcess("KILL"))
        return twistd.logged("SIGTERM drains").addCallback(lambda _: twistd)

    def send_held(self, client_tls):
        """Send a message the upstream holds at its final dot; (reply Deferred, held Deferred)."""
        held = self.upstream.stall(END_OF_DATA)
        sending = send_mail(reactor, self.port, client_tls, USER, PASSWORD,
                            "alice@example.com", ["bob@example.net"], MESSAGE)
        return sending, held

    @defer.inlineCallbacks
    def test_sighup_reloads_and_sigterm_drains_to_exit_0(self):
        twistd = yield self.start()
        new = make_certificates(os.path.join(self.directory, "new"))
        shutil.copy(new.cert_path, self.certs.cert_path)
        shutil.copy(new.key_path, self.certs.key_path)
        self.process.signalProcess("HUP")
        yield twistd.logged("TLS certificate and key reloaded")

        idle = yield connect(reactor, self.port)
        yield idle.command(b"EHLO client.example", expect=250)
        yield idle.starttls(client_options(new))
        sending, held = self.send_held(client_options(new))
        yield held

        self.process.signalProcess("TERM")
        (told,) = yield idle.replies(1)
        self.assertEqual(str(told), SHUTTING_DOWN)
        yield self.assertFailure(connect(reactor, self.port), ConnectionRefusedError)
        self.upstream.release()
        reply = yield sending
        self.assertEqual(reply.code, 250)
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        self.assertEqual(len(self.upstream.messages), 1)

    @defer.inlineCallbacks
    def test_sigterm_with_silent_tls_clients_exits_within_5_s(self):
        """
        Three logged-in TLS clients that never read again (so never answer
        the close_notify after the 421, nor close): nothing is in flight,
        so the process ends within 5 s all the same, with status 0.
        """
        twistd = yield self.start()
        for _ in range(3):
            client = yield connect(reactor, self.port)
            yield client.command(b"EHLO client.example", expect=250)
            yield client.starttls(client_options(self.certs))
            yield client.command(AUTH_PLAIN, expect=235)
            client.transport.pauseProducing()
            self.addCleanup(client.transport.abortConnection)
        signalled = reactor.seconds()
        self.process.signalProcess("TERM")
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        self.assertLess(reactor.seconds() - signalled, 5)
        self.assertIn("closing 3 idle session(s)", twistd.log)

    @defer.inlineCallbacks
    def test_second_sigterm_ends_the_drain_at_once(self):
        twistd = yield self.start()
        sending, held = self.send_held(client_options(self.certs))
        yield held
        self.process.signalProcess("TERM")
        yield twistd.logged("draining")
        self.process.signalProcess("INT")
        yield twistd.logged("SIGINT again: ending the drain now")
        yield self.assertFailure(sending, ConnectionLost)  # no reply: cut off
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        self.assertIn("drain ended early: cutting off 1 session(s)", twistd.log)

    @defer.inlineCallbacks
    def test_sighup_and_sigusr1_during_the_drain_lose_nothing(self):
        """
        A certificate reload hook or logrotate signalling during a restart: every message
        held at its final dot gets its real reply, and arrives once.
        """
        twistd = yield self.start()
        held = self.upstream.stall(END_OF_DATA, count=HELD)
        sending = [
            send_mail(reactor, self.port, client_options(self.certs), USER, PASSWORD,
                      "alice@example.com", [f"rcpt{n}@example.net"], MESSAGE)
            for n in range(HELD)
        ]
        yield held
        self.process.signalProcess("TERM")
        yield twistd.logged(f"for {HELD} message(s) in flight")
        self.process.signalProcess("HUP")
        yield twistd.logged("TLS certificate and key reloaded")
        self.process.signalProcess(signal.SIGUSR1)
        yield twistd.logged("log files reopened")
        self.upstream.release()
        answered = yield defer.gatherResults(sending)
        self.assertEqual({reply.code for reply in answered}, {250})
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        self.assertEqual(sorted(m.recipients for m in self.upstream.messages),
                         sorted((f"rcpt{n}@example.net",) for n in range(HELD)))

    @defer.inlineCallbacks
    def test_signals_during_traffic_lose_nothing_and_double_nothing(self):
        """
        A small soak with signals: SIGHUP and SIGUSR1 sent while batches of
        messages flow, then SIGTERM in the middle of the last batch, with
        SIGHUP and SIGUSR1 during the drain.  Every client that heard 250
        has its message upstream exactly once; every other one has none.
        """
        twistd = yield self.start()
        tls = client_options(self.certs)
        results = {}

        def send(n):
            sent = send_mail(reactor, self.port, tls, USER, PASSWORD, "alice@example.com",
                             [f"rcpt{n}@example.net"], MESSAGE)
            return sent.addBoth(lambda result: results.__setitem__(n, result))

        for batch in range(5):
            sending = [send(batch * 10 + n) for n in range(10)]
            self.process.signalProcess("HUP")
            self.process.signalProcess(signal.SIGUSR1)
            yield defer.gatherResults(sending)
        held = self.upstream.stall(END_OF_DATA)
        last = [send(50 + n) for n in range(10)]
        yield held  # so the drain has a message to wait for while it is signalled
        self.process.signalProcess("TERM")
        yield twistd.logged("draining:")
        self.process.signalProcess("HUP")
        self.process.signalProcess(signal.SIGUSR1)
        self.upstream.release()
        yield defer.gatherResults(last)
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        delivered = [m.recipients[0] for m in self.upstream.messages]
        self.assertEqual(len(delivered), len(set(delivered)), "a message went twice")
        accepted = {f"rcpt{n}@example.net" for n, result in results.items()
                    if getattr(result, "code", None) == 250}
        self.assertEqual(set(delivered), accepted)
        self.assertGreaterEqual(len(accepted), 50)

    @defer.inlineCallbacks
    def test_drain_timeout_spares_a_message_whose_final_dot_went_upstream(self):
        """
        The upstream answers the final dot after the drain timeout, within its own: that
        client gets its 250 (cut off, it would send the message again); one still sending
        its message is cut off, and that message never reaches the upstream.
        """
        twistd = yield self.start("--drain_timeout=0.5", "--upstream_timeout=30")
        sending, held = self.send_held(client_options(self.certs))
        yield held
        unfinished = yield connect(reactor, self.port)
        yield unfinished.command(b"EHLO client.example", expect=250)
        yield unfinished.starttls(client_options(self.certs))
        yield unfinished.command(b"EHLO client.example", expect=250)
        yield unfinished.command(AUTH_PLAIN, expect=235)
        yield start_data(unfinished, b"alice@example.com", b"carol@example.net")
        unfinished.send(b"Subject: never ends\r\n")
        self.process.signalProcess("TERM")
        yield twistd.logged("drain timeout: cutting off 1 session(s) without a reply; "
                            "waiting up to 30.0 s for 1 message(s) whose final dot went upstream")
        yield unfinished.wait_closed()
        self.upstream.release()
        reply = yield sending
        self.assertEqual(reply.code, 250)
        ended = yield twistd.ended
        self.assertIsInstance(ended, ProcessDone, twistd.log)
        self.assertEqual([m.recipients for m in self.upstream.messages], [("bob@example.net",)])
