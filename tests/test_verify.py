"""
Recipients judged at RCPT time (C{--verify_recipients}, L{smtpproxy.verify}): end to end
over loopback with real TLS, the real proxy, a real HTTP API and the recording upstream,
scripted to refuse chosen recipients (or senders) at RCPT (MAIL); and the verdict cache on
a clock.
"""

import os
from types import SimpleNamespace

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from smtpproxy import Upstream, replies
from smtpproxy.capabilities import UpstreamCapabilities
from smtpproxy.verify import RecipientCheck, VerdictCache
from tests.support.certs import make_certificates, server_options, trust_root
from tests.support.client import data_block
from tests.support.mail import MESSAGE
from tests.support.stack import Stack
from tests.support.upstream import start_upstream

UNKNOWN = (550, "5.1.1 <carol@example.org>: Recipient address rejected: User unknown")
UNAVAILABLE = (451, "4.4.1 Upstream server unavailable, try again later")


def rcpt(address):
    return b"RCPT TO:<" + address + b">"


class VerifyTestCase(TestCase):
    verify = True
    timeout = 10  # a check left open would otherwise hang for trial's two minutes

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), verify_recipients=self.verify)
        self.addCleanup(self.stack.close)
        self.upstream = self.stack.upstream
        self.upstream.rcpt_refusals["carol@example.org"] = UNKNOWN

    def carrying(self, line):
        """The upstream connections that received C{line}, as their command lists."""
        return [commands for commands in self.upstream.commands if line in commands]

    @defer.inlineCallbacks
    def asking(self):
        """A client whose MAIL and RCPT for bob are in, with the upstream stalled at that RCPT."""
        stalled = self.upstream.stall("RCPT")
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\n" + rcpt(b"bob@example.net") + b"\r\n")
        yield stalled
        return client

    @defer.inlineCallbacks
    def finish(self, client):
        """Send the message after a 354; the reply to its final dot."""
        client.send(data_block(MESSAGE))
        (reply,) = yield client.replies(1)
        return reply


class RefusedAtRcptTests(VerifyTestCase):
    @defer.inlineCallbacks
    def test_refused_recipient_alone_is_refused(self):
        """
        The upstream's refusal is the RCPT's answer; the other recipients get the message,
        on a connection of its own: the checking connection never sees DATA.
        """
        client = yield self.stack.session()
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        bob = yield client.command(rcpt(b"bob@example.net"))
        carol = yield client.command(rcpt(b"carol@example.org"))
        dave = yield client.command(rcpt(b"dave@example.net"))
        self.assertEqual((bob.code, bob.text), (250, "2.1.5 Recipient OK"))
        self.assertEqual((carol.code, carol.text), UNKNOWN)
        self.assertEqual(dave.code, 250)
        yield client.command(b"DATA", expect=354)
        reply = yield self.finish(client)
        self.assertEqual((reply.code, reply.text), (250, "2.0.0 Ok: queued as Q00001"))
        yield client.close()
        yield self.stack.settle()
        (message,) = self.upstream.messages
        self.assertEqual(message.recipients, ("bob@example.net", "dave@example.net"))
        self.assertEqual(self.stack.api.requests[0].json["to"], list(message.recipients))
        checking, delivery = self.upstream.commands
        self.assertEqual(checking, [
            b"EHLO proxy.test", b"MAIL FROM:<alice@example.com>", rcpt(b"bob@example.net"),
            rcpt(b"carol@example.org"), rcpt(b"dave@example.net"), b"QUIT",
        ])
        self.assertIn(b"DATA", delivery)

    @defer.inlineCallbacks
    def test_pipelined_envelope_is_answered_in_order(self):
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\n" + rcpt(b"bob@example.net") + b"\r\n"
                    + rcpt(b"carol@example.org") + b"\r\n" + rcpt(b"dave@example.net")
                    + b"\r\nDATA\r\n")
        answers = yield client.replies(5)
        self.assertEqual([r.code for r in answers], [250, 250, 550, 250, 354])
        self.assertEqual(answers[2].text, UNKNOWN[1])
        reply = yield self.finish(client)
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream.messages[0].recipients,
                         ("bob@example.net", "dave@example.net"))
        yield client.close()

    @defer.inlineCallbacks
    def test_nobody_accepted_means_no_data(self):
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\n" + rcpt(b"carol@example.org")
                    + b"\r\nDATA\r\nNOOP\r\n")
        answers = yield client.replies(4)
        self.assertEqual([r.code for r in answers], [250, 550, 503, 250])
        yield client.close()
        self.assertEqual(self.upstream.messages, [])
        self.assertEqual(self.stack.api.requests, [])

    @defer.inlineCallbacks
    def test_too_many_recipients_upstream_is_relayed_as_temporary(self):
        self.upstream.rcpt_refusals["bob@example.net"] = (452, "4.5.3 Too many recipients")
        client = yield self.stack.session()
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        reply = yield client.command(rcpt(b"bob@example.net"))
        self.assertEqual((reply.code, reply.text), (452, "4.5.3 Too many recipients"))
        yield client.close()

    @defer.inlineCallbacks
    def test_refused_sender_is_the_answer_to_each_rcpt(self):
        """The message would meet that refusal after the dot; one question is enough."""
        self.upstream.sender_refusals["alice@example.com"] = (553, "5.7.1 Sender not allowed")
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\n" + rcpt(b"bob@example.net") + b"\r\n"
                    + rcpt(b"dave@example.net") + b"\r\n")
        answers = yield client.replies(3)
        self.assertEqual([(r.code, r.text) for r in answers[1:]],
                         [(553, "5.7.1 Sender not allowed")] * 2)
        yield client.close()
        self.assertEqual(self.upstream.connections, 1)


class CacheTests(VerifyTestCase):
    @defer.inlineCallbacks
    def test_verdicts_are_reused_per_sender_and_recipient(self):
        """A second transaction with the same sender asks the upstream nothing."""
        client = yield self.stack.session()
        for _ in range(2):
            yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
            yield client.command(rcpt(b"bob@example.net"), expect=250)
            reply = yield client.command(rcpt(b"carol@example.org"))
            self.assertEqual((reply.code, reply.text), UNKNOWN)
            yield client.command(b"RSET", expect=250)
        self.assertEqual(self.upstream.connections, 1)
        yield client.command(b"MAIL FROM:<other@example.com>", expect=250)
        yield client.command(rcpt(b"bob@example.net"), expect=250)
        yield client.close()
        self.assertEqual(len(self.carrying(rcpt(b"bob@example.net"))), 2)

    @defer.inlineCallbacks
    def test_many_pipelined_cached_verdicts(self):
        """Verdicts ready at once are answered in turn, however many are pipelined."""
        client = yield self.stack.session()
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        yield client.command(rcpt(b"carol@example.org"), expect=550)
        client.send((rcpt(b"carol@example.org") + b"\r\n") * 2000 + b"NOOP\r\n")
        answers = yield client.replies(2001)
        self.assertEqual({r.code for r in answers[:-1]}, {550})
        self.assertEqual(answers[-1].code, 250)
        yield client.close()
        self.assertEqual(self.upstream.connections, 1)

    @defer.inlineCallbacks
    def test_a_temporary_refusal_is_asked_again(self):
        self.upstream.rcpt_refusals["bob@example.net"] = (450, "4.2.1 Mailbox busy")
        client = yield self.stack.session()
        for _ in range(2):
            yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
            yield client.command(rcpt(b"bob@example.net"), expect=450)
            yield client.command(b"RSET", expect=250)
        yield client.close()
        self.assertEqual(len(self.carrying(rcpt(b"bob@example.net"))), 2)

    def test_cache_forgets_after_its_time_and_beyond_its_size(self):
        clock = task.Clock()
        cache = VerdictCache(clock, lifetime=60, size=2)
        for key in "abc":
            cache.put(key, replies.RECIPIENT_OK)
        self.assertEqual([cache.get(key) for key in "abc"],
                         [None, replies.RECIPIENT_OK, replies.RECIPIENT_OK])
        clock.advance(60)
        self.assertEqual([cache.get(key) for key in "bc"], [None, None])
        off = VerdictCache(clock, lifetime=0)
        off.put("a", replies.RECIPIENT_OK)
        self.assertIsNone(off.get("a"))


class UnavailableTests(VerifyTestCase):
    @defer.inlineCallbacks
    def test_upstream_down_is_451_for_the_rcpt(self):
        yield self.upstream.close()
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\n" + rcpt(b"bob@example.net") + b"\r\n"
                    + rcpt(b"dave@example.net") + b"\r\nDATA\r\n")
        answers = yield client.replies(4)
        self.assertEqual([(r.code, r.text) for r in answers[1:3]], [UNAVAILABLE] * 2)
        self.assertEqual(answers[3].code, 503)
        yield client.close()

    @defer.inlineCallbacks
    def test_421_is_451_never_relayed(self):
        self.upstream.rcpt_refusals["bob@example.net"] = (421, "4.3.2 Going down")
        client = yield self.stack.session()
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        reply = yield client.command(rcpt(b"bob@example.net"))
        self.assertEqual((reply.code, reply.text), UNAVAILABLE)
        yield client.close()

    @defer.inlineCallbacks
    def test_client_gone_while_asking_closes_the_check(self):
        """The pending verdict is dropped and the checking connection ends."""
        client = yield self.asking()
        yield client.close()
        self.upstream.release()
        yield self.upstream.wait_idle()
        (commands,) = self.upstream.commands
        self.assertEqual(commands[-2:], [rcpt(b"bob@example.net"), b"QUIT"])
        self.assertEqual(self.upstream.messages, [])

    @defer.inlineCallbacks
    def test_draining_answers_the_pending_rcpt_then_closes(self):
        client = yield self.asking()
        drained = self.stack.factory.drain(30)
        self.upstream.release()
        answers = yield client.replies(3)
        self.assertEqual([str(r) for r in answers[1:]],
                         ["250 2.1.5 Recipient OK", str(replies.SHUTTING_DOWN.code) + " "
                          + replies.SHUTTING_DOWN.text])
        yield client.wait_closed()
        yield drained


class OffTests(VerifyTestCase):
    verify = False

    @defer.inlineCallbacks
    def test_without_the_option_the_upstream_judges_after_the_dot(self):
        client = yield self.stack.session()
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        yield client.command(rcpt(b"bob@example.net"), expect=250)
        yield client.command(rcpt(b"carol@example.org"), expect=250)
        self.assertEqual(self.upstream.connections, 0)
        yield client.command(b"DATA", expect=354)
        reply = yield self.finish(client)
        self.assertEqual((reply.code, reply.text), UNKNOWN)
        yield client.close()
        self.assertEqual(self.upstream.messages, [])


class CheckingConnectionTests(TestCase):
    """
    L{RecipientCheck} alone against the recording upstream: the connection steps it shares
    with the delivery (STARTTLS, AUTH), its timeout, and a connection lost while idle.
    """

    timeout = 10

    def setUp(self):
        directory = self.mktemp()
        os.mkdir(directory)
        self.certs = make_certificates(directory)

    def check(self, timeout=10, **settings):
        logins = {"ann": "pw"} if "username" in settings else None
        fake = start_upstream(reactor, tls=server_options(self.certs), logins=logins,
                              rcpt_refusals={"carol@example.org": UNKNOWN})
        self.addCleanup(fake.close)
        config = Upstream(host="127.0.0.1", port=fake.port, timeout=timeout,
                          trust_root=trust_root(self.certs), **settings)
        services = SimpleNamespace(
            reactor=reactor, config=SimpleNamespace(upstream=config, hostname="proxy.test"),
            verdicts=VerdictCache(reactor, 0), capabilities=UpstreamCapabilities(reactor, None))
        return fake, RecipientCheck(services, "alice@example.com")

    @defer.inlineCallbacks
    def test_over_starttls_with_login(self):
        fake, check = self.check(tls="starttls", username="ann", password="pw")
        bob = yield check.ask("bob@example.net")
        carol = yield check.ask("carol@example.org")
        self.assertEqual((bob, carol), (replies.RECIPIENT_OK, replies.Reply(*UNKNOWN)))
        check.close()
        yield fake.wait_idle()
        (commands,) = fake.commands
        self.assertEqual(commands[1:3], [b"STARTTLS", b"EHLO proxy.test"])
        self.assertTrue(commands[3].startswith(b"AUTH "))
        self.assertEqual(commands[4:], [b"MAIL FROM:<alice@example.com>",
                                        rcpt(b"bob@example.net"), rcpt(b"carol@example.org"),
                                        b"QUIT"])

    @defer.inlineCallbacks
    def test_refused_login_is_451_and_an_error(self):
        fake, check = self.check(tls="starttls", username="ann", password="wrong")
        with capturedLogs() as logged:
            reply = yield check.ask("bob@example.net")
        self.assertEqual(reply, replies.UPSTREAM_UNAVAILABLE)
        [event] = logged
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertNotIn("wrong", formatEvent(event) + repr(event))

    @defer.inlineCallbacks
    def test_silent_upstream_times_out(self):
        fake, check = self.check(timeout=0.3)
        stalled = fake.stall("RCPT")
        with capturedLogs() as logged:
            asked = check.ask("bob@example.net")
            yield stalled
            reply = yield asked
        self.assertEqual(reply, replies.UPSTREAM_UNAVAILABLE)
        self.assertIn("Timeout", formatEvent(logged[-1]))
        again = yield check.ask("dave@example.net")
        self.assertEqual(again, replies.UPSTREAM_UNAVAILABLE)
        self.assertEqual(fake.connections, 1)

    @defer.inlineCallbacks
    def test_connection_lost_while_idle_is_opened_again(self):
        fake, check = self.check()
        yield check.ask("bob@example.net")
        check._client.transport.abortConnection()
        yield fake.wait_idle()
        reply = yield check.ask("dave@example.net")
        self.assertEqual((reply, fake.connections), (replies.RECIPIENT_OK, 2))
        check.close()
        yield fake.wait_idle()
