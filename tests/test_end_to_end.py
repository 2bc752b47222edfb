"""
End to end over loopback: a real client with real TLS, the real proxy, a
real HTTP policy API (twisted.web) and a real upstream (Twisted's SMTP
server).  One test per behaviour of docs/protocol.rst sections 1 to 5 that needs the
whole path.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from smtpproxy import Limits
from tests.support.client import data_block
from tests.support.mail import MESSAGE, POLICY_HEADER, checked
from tests.support.stack import Stack


class EndToEndTestCase(TestCase):
    limits = Limits()
    api_timeout = 5

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), self.limits, api_timeout=self.api_timeout)
        self.addCleanup(self.stack.close)
        self.api = self.stack.api
        self.upstream = self.stack.upstream


class DeliveryTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_allowed_message_is_delivered_with_the_api_headers(self):
        reply = yield self.stack.send(MESSAGE, ["bob@example.net", "carol@example.org"])
        self.assertEqual((reply.code, reply.text), (250, "2.0.0 Ok: queued as Q00001"))
        (request,) = self.api.requests
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.headers["content-type"], "application/json")
        self.assertEqual(request.json, {
            "username": "alice", "password": "s3cret",
            "from": "alice@example.com", "to": ["bob@example.net", "carol@example.org"],
            "headers": [{"name": "From", "value": "alice@example.com"},
                        {"name": "To", "value": "bob@example.net"},
                        {"name": "Subject", "value": "hi"}],
            "client_address": "127.0.0.1", "helo": "client.example",
            "mailParameters": [],
            "rcptParameters": [{"address": "bob@example.net", "parameters": []},
                               {"address": "carol@example.org", "parameters": []}],
        })
        (message,) = self.upstream.messages
        self.assertEqual(message.sender, "alice@example.com")
        self.assertEqual(message.recipients, ("bob@example.net", "carol@example.org"))
        self.assertEqual(message.helo, "proxy.test")
        self.assertEqual(message.data, checked(MESSAGE))

    @defer.inlineCallbacks
    def test_utf8_and_dots_survive(self):
        body = "Subject: Grüße\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n".encode()
        yield self.stack.send(body)
        self.assertEqual(self.api.requests[0].json["headers"], [{"name": "Subject", "value": "Grüße"}])
        self.assertEqual(self.upstream.messages[0].data,
                         checked(body))

    @defer.inlineCallbacks
    def test_several_messages_per_connection(self):
        client = yield self.stack.session()
        for number in range(3):
            yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
            yield client.command(b"RCPT TO:<r%d@example.net>" % number, expect=250)
            yield client.command(b"DATA", expect=354)
            client.send(data_block(b"Subject: %d\r\n\r\nbody\r\n" % number))
            (reply,) = yield client.replies(1)
            self.assertEqual(reply.code, 250)
        yield client.close()
        self.assertEqual([m.recipients for m in self.upstream.messages],
                         [("r0@example.net",), ("r1@example.net",), ("r2@example.net",)])

    @defer.inlineCallbacks
    def test_pipelined_quit_after_the_dot(self):
        """The 221 comes after the DATA reply; the client learns the outcome."""
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        replies = yield client.replies(3)
        self.assertEqual([r.code for r in replies], [250, 250, 354])
        client.send(data_block(MESSAGE) + b"QUIT\r\n")
        replies = yield client.replies(2)
        self.assertEqual([r.code for r in replies], [250, 221])
        yield client.wait_closed()

    @defer.inlineCallbacks
    def test_overlong_line_stays_data(self):
        """docs/twisted.rst fight E: a 100 kB line never drops the session into command mode."""
        body = b"Subject: long\r\n\r\n" + b"A" * 100000 + b"\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\n"
        reply = yield self.stack.send(body)
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream.messages[0].data,
                         checked(body))

    @defer.inlineCallbacks
    def test_twenty_megabytes(self):
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
        reply = yield self.stack.send(body)
        self.assertEqual(reply.code, 250)
        self.assertEqual(len(self.upstream.messages[0].data), len(body) + len(POLICY_HEADER))


class PolicyTests(EndToEndTestCase):
    api_timeout = 0.5

    @defer.inlineCallbacks
    def test_denied_mail_reaches_no_upstream(self):
        self.api.answer = lambda request: {"allow": False, "reason": "not your address"}
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text), (550, "5.7.1 not your address"))
        self.assertEqual(self.upstream.connections, 0)

    @defer.inlineCallbacks
    def test_temporary_denial(self):
        self.api.answer = lambda request: {"allow": False, "reason": "rate", "temporary": True}
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text), (450, "4.7.1 rate"))

    @defer.inlineCallbacks
    def test_api_down(self):
        yield self.api.close()
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text), (451, "4.3.0 Policy service unavailable, try again later"))
        self.assertEqual(self.upstream.connections, 0)

    @defer.inlineCallbacks
    def test_api_error_and_garbage(self):
        for answer in [(500, b"oops"), (200, b"not json"), {"allow": "yes"},
                       {"allow": True, "headers": [{"name": "X", "value": "a\r\nBcc: evil"}]}]:
            self.api.answer = lambda request, answer=answer: answer
            reply = yield self.stack.send(MESSAGE)
            self.assertEqual(reply.code, 451, answer)
        self.assertEqual(self.upstream.connections, 0)

    @defer.inlineCallbacks
    def test_api_too_slow(self):
        self.api.answer = lambda request: defer.Deferred()
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual(reply.code, 451)
        self.assertEqual(self.upstream.connections, 0)

    @defer.inlineCallbacks
    def test_client_hang_up_mid_body_delivers_nothing(self):
        """The API call is cancelled; the upstream is never contacted."""
        asked, cancelled = defer.Deferred(), defer.Deferred()

        def answer(request):
            asked.callback(None)
            return defer.Deferred(lambda d: cancelled.callback(None))

        self.api.answer = answer
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        yield client.replies(3)
        client.send(b"Subject: x\r\n\r\nhalf a bo")
        yield asked
        yield client.close()
        yield cancelled
        self.assertEqual(self.upstream.connections, 0)


class UpstreamTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_upstream_4xx_relayed(self):
        self.upstream.data_reply = (452, "4.3.1 Insufficient system storage")
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text), (452, "4.3.1 Insufficient system storage"))

    @defer.inlineCallbacks
    def test_refused_recipient_fails_the_whole_message(self):
        self.upstream.rcpt_refusals["carol@example.org"] = (550, "5.1.1 No such user")
        reply = yield self.stack.send(MESSAGE, ["bob@example.net", "carol@example.org"])
        self.assertEqual((reply.code, reply.text), (550, "5.1.1 No such user"))
        self.assertEqual(self.upstream.messages, [])

    @defer.inlineCallbacks
    def test_upstream_down(self):
        yield self.upstream.close()
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text[:5]), (451, "4.4.1"))

    @defer.inlineCallbacks
    def test_drop_after_the_dot_is_temporary(self):
        self.upstream.drop_after_data = True
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual((reply.code, reply.text[:5]), (451, "4.4.1"))
        self.assertEqual(self.upstream.connections, 1)


class SmugglingTests(EndToEndTestCase):
    @defer.inlineCallbacks
    def test_starttls_injection(self):
        """Commands pipelined behind STARTTLS are never answered inside TLS."""
        from tests.support.client import connect

        client = yield connect(reactor, self.stack.port)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(self.stack.client_tls, pipelined=b"RSET\r\nMAIL FROM:<a@b.c>\r\n")
        reply = yield client.command(b"NOOP")
        self.assertEqual((reply.code, client.unsolicited), (250, []))
        reply = yield client.command(b"MAIL FROM:<a@b.c>")
        self.assertEqual(reply.code, 530)
        yield client.close()

    @defer.inlineCallbacks
    def test_bare_lf_end_of_data_lookalike(self):
        """
        A second transaction behind a bare-LF dot is never relayed as one: the bare LFs are
        line ends, the dot line is relayed stuffed, and all of it is the one message's body.
        """
        client = yield self.stack.session()
        client.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        yield client.replies(3)
        smuggled = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
                    b"Subject: smuggled\r\n\r\n")
        client.send(b"Subject: x\r\n\r\nhi\n.\n" + smuggled + b".\r\nNOOP\r\n")
        replies = yield client.replies(2)
        self.assertEqual([(r.code, r.text) for r in replies],
                         [(250, "2.0.0 Ok: queued as Q00001"), (250, "2.0.0 OK")])
        yield client.close()
        (message,) = self.upstream.messages
        self.assertEqual(message.recipients, ("bob@example.net",))
        self.assertEqual(message.data,
                         b"Subject: x\r\nX-Policy: checked\r\n\r\nhi\r\n.\r\n" + smuggled)
