"""
The login check at AUTH (C{--auth_api}, issue 9) end to end: the real
proxy with real TLS, a real twisted.web API for each of C{--api} and
C{--auth_api}, and a real upstream.
"""

import base64

import attrs
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Policy
from smtpproxy.login import LoginVerdict, parse_login_answer
from smtpproxy.replies import AUTH_OK as AUTH_OK_REPLY
from tests.support.client import submit
from tests.support.loopback import listen_loopback
from tests.support.stack import Stack, by_password
from tests.support.mail import AUTH_OK, INVALID, MESSAGE, PASSWORD, PLAIN, USER, plain
from tests.support.session import SessionTestCase

TEMPORARY = "454 4.7.0 Temporary authentication failure"


class LoginCheckTestCase(TestCase):
    api_timeout = 5

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), api_timeout=self.api_timeout, login_check=True)
        self.addCleanup(self.stack.close)
        self.stack.auth_api.answer = by_password

    @defer.inlineCallbacks
    def session(self):
        client = yield self.stack.session(login=False)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def auth(self, client, line=None):
        return str((yield client.command(line or plain())))


class AllowDenyRetryTests(LoginCheckTestCase):
    @defer.inlineCallbacks
    def test_deny_then_retry_then_allow_in_one_session(self):
        """A wrong password is 535 at AUTH; the session stays usable and the next try works."""
        client = yield self.session()
        self.assertEqual((yield self.auth(client, plain(password="wrong"))), INVALID)
        self.assertEqual(str((yield client.command(b"MAIL FROM:<alice@example.com>"))),
                         "530 5.7.0 Authentication required")
        self.assertEqual((yield self.auth(client, plain(password="also wrong"))), INVALID)
        self.assertEqual((yield self.auth(client)), AUTH_OK)
        reply = yield submit(client, b"alice@example.com", b"bob@example.net", MESSAGE)
        self.assertEqual(reply.code, 250)
        self.assertEqual(len(self.stack.upstream.messages), 1)
        asked = [r.json for r in self.stack.auth_api.requests]
        self.assertEqual(asked[2], {
            "username": USER, "password": PASSWORD, "mechanism": "PLAIN",
            "client_address": "127.0.0.1", "helo": "client.example",
        })
        self.assertEqual([a["password"] for a in asked], ["wrong", "also wrong", PASSWORD])
        # The per-message call is unchanged: it still has the login.
        (message,) = self.stack.api.requests
        self.assertEqual((message.json["username"], message.json["password"]), (USER, PASSWORD))

    @defer.inlineCallbacks
    def test_auth_login_mechanism(self):
        client = yield self.session()
        yield client.command(b"AUTH LOGIN", expect=334)
        yield client.command(base64.b64encode(USER.encode()), expect=334)
        self.assertEqual(str((yield client.command(base64.b64encode(b"wrong")))), INVALID)
        yield client.command(b"AUTH LOGIN " + base64.b64encode(USER.encode()), expect=334)
        self.assertEqual(str((yield client.command(base64.b64encode(PASSWORD.encode())))),
                         AUTH_OK)
        self.assertEqual([r.json["mechanism"] for r in self.stack.auth_api.requests],
                         ["LOGIN", "LOGIN"])

    @defer.inlineCallbacks
    def test_pipelined_commands_wait_for_the_verdict(self):
        """
        Commands pipelined behind AUTH are answered after it, in order: had
        MAIL been taken before the verdict, it would have been 530.
        """
        arrived, verdict = defer.Deferred(), defer.Deferred()
        self.stack.auth_api.answer = lambda request: arrived.callback(None) or verdict
        client = yield self.session()
        client.send(plain() + b"\r\nMAIL FROM:<alice@example.com>\r\n"
                    b"RCPT TO:<bob@example.net>\r\nNOOP\r\n")
        replies = client.replies(4)
        yield arrived
        self.assertFalse(replies.called)
        verdict.callback({"allow": True})
        self.assertEqual([r.code for r in (yield replies)], [235, 250, 250, 250])

    @defer.inlineCallbacks
    def test_pipelined_after_a_refusal(self):
        client = yield self.session()
        client.send(plain(password="wrong") + b"\r\nMAIL FROM:<alice@example.com>\r\n"
                    + plain() + b"\r\nMAIL FROM:<alice@example.com>\r\n")
        self.assertEqual([str(r) for r in (yield client.replies(4))],
                         [INVALID, "530 5.7.0 Authentication required", AUTH_OK,
                          "250 2.1.0 Sender OK"])

    @defer.inlineCallbacks
    def test_hang_up_while_checking_cancels_the_check(self):
        """The API's request is abandoned and nothing is left waiting."""
        arrived, cancelled = defer.Deferred(), defer.Deferred()

        def answer(request):
            arrived.callback(None)
            return defer.Deferred(lambda _: cancelled.callback(None))

        self.stack.auth_api.answer = answer
        client = yield self.session()
        client.send(plain() + b"\r\n")
        yield arrived
        yield client.close()
        yield cancelled
        self.assertFalse(self.stack.factory.connections.total)


class TroubleTests(LoginCheckTestCase):
    """Each kind of trouble is 454 (never 535: no password was judged wrong), then a retry works."""

    api_timeout = 0.2

    @defer.inlineCallbacks
    def assertTemporary(self, answer):
        self.stack.auth_api.answer = answer
        client = yield self.session()
        self.assertEqual((yield self.auth(client)), TEMPORARY)
        self.stack.auth_api.answer = by_password
        self.assertEqual((yield self.auth(client)), AUTH_OK)
        self.assertEqual(self.stack.factory.metrics.registry.get_sample_value(
            "smtpproxy_logins_total", {"result": "temp_failed"}), 1)

    def test_temporary(self):
        return self.assertTemporary(lambda r: {"allow": False, "temporary": True})

    def test_timeout(self):
        return self.assertTemporary(lambda r: defer.Deferred())

    def test_server_error(self):
        return self.assertTemporary(lambda r: (500, b'{"allow": true}'))

    def test_not_json(self):
        return self.assertTemporary(lambda r: (200, b"<html>"))

    def test_allow_not_a_boolean(self):
        return self.assertTemporary(lambda r: {"allow": "yes"})

    def test_no_allow(self):
        return self.assertTemporary(lambda r: {"temporary": False})

    @defer.inlineCallbacks
    def test_refused(self):
        closed = listen_loopback(reactor, Factory())
        yield closed.close()
        stack = Stack(reactor, self.mktemp(), login_check=True, policy=Policy(
            url=self.stack.api.url, auth_url=f"http://127.0.0.1:{closed.port}/login"))
        self.addCleanup(stack.close)
        client = yield stack.session(login=False)
        self.addCleanup(client.close)
        self.assertEqual((yield self.auth(client)), TEMPORARY)


class WithoutLoginCheckTests(TestCase):
    """Off by default: AUTH takes any well-formed login, and the API judges it with the message."""

    @defer.inlineCallbacks
    def test_wrong_password_refused_after_data(self):
        stack = Stack(reactor, self.mktemp())
        self.addCleanup(stack.close)
        stack.api.answer = lambda r: {"allow": r["password"] == PASSWORD, "reason": "bad login"}
        client = yield stack.session(login=False)
        self.addCleanup(client.close)
        self.assertEqual(str((yield client.command(plain(password="wrong")))), AUTH_OK)
        reply = yield submit(client, b"alice@example.com", b"bob@example.net", MESSAGE)
        self.assertEqual(str(reply), "550 5.7.1 bad login")


class AwaitTests(SessionTestCase):
    """The wait for the verdict in memory, where a clock shows that no timer runs."""

    def config(self, **changes):
        policy = Policy(url="http://127.0.0.1:1/", auth_url="http://127.0.0.1:1/login")
        return attrs.evolve(super().config(**changes), policy=policy)

    def setUp(self):
        super().setUp()
        self.cancelled = []
        self.verdict = defer.Deferred(self.cancelled.append)
        self.policy.check_login = lambda request: self.verdict
        self.tls()

    def test_no_timer_while_waiting_then_idle_again(self):
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN + b"\r\nNOOP\r\n"), [])
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(10000)
        self.assertFalse(self.transport.disconnecting)
        self.transport.clear()
        self.verdict.callback(LoginVerdict(AUTH_OK_REPLY))
        self.assertEqual(self.transport.value(),
                         f"{AUTH_OK}\r\n250 2.0.0 OK\r\n".encode())
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(self.limits.idle_timeout)
        self.assertTrue(self.transport.disconnecting)

    def test_hang_up_cancels_and_sends_nothing(self):
        self.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.transport.clear()
        self.session.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.cancelled, [self.verdict])
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ParseLoginAnswerTests(SynchronousTestCase):
    """Pure: the answer to the login check, as the reply to AUTH."""

    def reply(self, body, status=200):
        return str(parse_login_answer(status, body).reply.code)

    def test_answers(self):
        for body, code in [
            (b'{"allow": true}', "235"),
            (b'{"allow": true, "temporary": true, "reason": "x", "other": 1}', "235"),
            (b'{"allow": false}', "535"),
            (b'{"allow": false, "temporary": false}', "535"),
            (b'{"allow": false, "temporary": true}', "454"),
            (b'{"allow": false, "temporary": "yes"}', "454"),
            (b'{"allow": null}', "454"),
            (b"[true]", "454"),
            (b"", "454"),
        ]:
            self.assertEqual(self.reply(body), code, body)

    def test_status_and_cause(self):
        verdict = parse_login_answer(503, b'{"allow": true}')
        self.assertEqual((verdict.reply.code, verdict.cause), (454, "HTTP status 503"))
        self.assertIsNone(parse_login_answer(200, b'{"allow": false}').cause)
