"""
End to end: the ESMTP extensions the proxy offers as the upstream does
(DSN, SMTPUTF8, SIZE), the parameters it takes and relays byte for byte,
AUTH= and quoted local parts, and what the policy API sees of them.
"""

from twisted.internet import defer, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from tests.support.client import data_block
from tests.support.mail import MESSAGE
from tests.support.stack import Stack

ALL = ("DSN", "SMTPUTF8", "SIZE 200000", "8BITMIME")


class ESMTPTestCase(TestCase):
    offers = ALL
    config = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), upstream_offers=self.offers, **self.config)
        self.addCleanup(self.stack.close)
        self.upstream = self.stack.upstream
        yield self.stack.ready()
        self.upstream.commands.clear()

    @defer.inlineCallbacks
    def transaction(self, mail, rcpts, message=MESSAGE, client=None):
        """MAIL, each RCPT and DATA, expecting success; the reply to the final dot."""
        client = client or (yield self.stack.session())
        yield client.command(mail, expect=250)
        for rcpt in rcpts:
            yield client.command(rcpt, expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(data_block(message))
        (final,) = yield client.replies(1)
        yield client.close()
        return final

    def upstream_envelope(self):
        """The MAIL and RCPT lines of the one delivery the upstream saw."""
        (commands,) = [c for c in self.upstream.commands if b"DATA" in c]
        return [c for c in commands if c.startswith((b"MAIL", b"RCPT"))]


class OfferTests(ESMTPTestCase):
    @defer.inlineCallbacks
    def test_ehlo_after_tls_offers_what_the_upstream_does(self):
        client = yield self.stack.session(login=False)
        reply = yield client.command(b"EHLO client.example", expect=250)
        self.assertIn("DSN", reply.lines)
        self.assertIn("SMTPUTF8", reply.lines)
        self.assertIn("SIZE 200000", reply.lines)
        yield client.close()

    @defer.inlineCallbacks
    def test_nothing_extra_before_tls(self):
        from tests.support.client import connect

        client = yield connect(reactor, self.stack.port)
        reply = yield client.command(b"EHLO client.example", expect=250)
        self.assertNotIn("DSN", reply.lines)
        self.assertNotIn("SMTPUTF8", reply.lines)
        yield client.close()

    @defer.inlineCallbacks
    def test_size_over_the_upstream_limit_refused_at_mail(self):
        client = yield self.stack.session()
        reply = yield client.command(b"MAIL FROM:<alice@example.com> SIZE=547436")
        self.assertEqual((reply.code, reply.text), (552, "5.3.4 Message too big"))
        yield client.command(b"MAIL FROM:<alice@example.com> SIZE=199999", expect=250)
        yield client.close()


class NoOfferTests(ESMTPTestCase):
    offers = ()

    @defer.inlineCallbacks
    def test_not_offered_not_taken(self):
        client = yield self.stack.session()
        reply = yield client.command(b"EHLO client.example", expect=250)
        self.assertNotIn("DSN", reply.lines)
        self.assertNotIn("SMTPUTF8", reply.lines)
        self.assertIn("SIZE 52428800", reply.lines)
        for mail in [b"MAIL FROM:<a@example.com> RET=HDRS", b"MAIL FROM:<a@example.com> SMTPUTF8"]:
            reply = yield client.command(mail)
            self.assertEqual((reply.code, reply.text.split()[0]), (555, "5.5.4"))
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        reply = yield client.command(b"RCPT TO:<b@example.com> NOTIFY=NEVER")
        self.assertEqual((reply.code, reply.text.split()[0]), (555, "5.5.4"))
        yield client.close()


class DSNTests(ESMTPTestCase):
    @defer.inlineCallbacks
    def test_parameters_relayed_byte_for_byte_and_shown_to_the_api(self):
        reply = yield self.transaction(
            b"MAIL FROM:<alice@example.com> ret=hdrs ENVID=QQ+2B314 SIZE=100 AUTH=<>",
            [b"RCPT TO:<bob@example.net> NOTIFY=success,FAILURE ORCPT=rfc822;bob@example.net",
             b"RCPT TO:<carol@example.org>"],
        )
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream_envelope(), [
            # AUTH= stays behind: the proxy has not logged in to the upstream.
            b"MAIL FROM:<alice@example.com> ret=hdrs ENVID=QQ+2B314 SIZE=100",
            b"RCPT TO:<bob@example.net> NOTIFY=success,FAILURE ORCPT=rfc822;bob@example.net",
            b"RCPT TO:<carol@example.org>",
        ])
        (request,) = self.stack.api.requests
        self.assertEqual(request.json["mailParameters"], [
            {"keyword": "RET", "value": "hdrs"}, {"keyword": "ENVID", "value": "QQ+2B314"},
            {"keyword": "SIZE", "value": "100"}, {"keyword": "AUTH", "value": "<>"},
        ])
        self.assertEqual(request.json["rcptParameters"], [
            {"address": "bob@example.net", "parameters": [
                {"keyword": "NOTIFY", "value": "success,FAILURE"},
                {"keyword": "ORCPT", "value": "rfc822;bob@example.net"}]},
            {"address": "carol@example.org", "parameters": []},
        ])

    @defer.inlineCallbacks
    def test_malformed_or_repeated_is_501(self):
        client = yield self.stack.session()
        for mail in [b"RET=ALL", b"RET=FULL RET=HDRS", b"ENVID=a+b", b"ENVID=" + b"x" * 101,
                     b"AUTH=a=b", b"AUTH=alice", b"AUTH=a+40b+40example.com", b"SMTPUTF8=yes"]:
            reply = yield client.command(b"MAIL FROM:<a@example.com> " + mail)
            self.assertEqual((reply.code, reply.text.split()[0]), (501, "5.5.4"), mail)
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        for rcpt in [b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=SUCCESS,SUCCESS", b"NOTIFY=SOMETIMES",
                     b"ORCPT=bob@example.net", b"ORCPT=rfc822;a=b", b"NOTIFY=DELAY NOTIFY=DELAY"]:
            reply = yield client.command(b"RCPT TO:<b@example.com> " + rcpt)
            self.assertEqual((reply.code, reply.text.split()[0]), (501, "5.5.4"), rcpt)
        reply = yield client.command(b"RCPT TO:<b@example.com> X-FOO=1")
        self.assertEqual((reply.code, reply.text.split()[0]), (555, "5.5.4"))
        yield client.close()

    @defer.inlineCallbacks
    def test_upstream_that_stopped_offering_dsn_gets_none_and_the_log_says_so(self):
        self.upstream.offers = ()
        with capturedLogs() as logged:
            reply = yield self.transaction(
                b"MAIL FROM:<alice@example.com> RET=FULL",
                [b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS"],
            )
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream_envelope(), [
            b"MAIL FROM:<alice@example.com>", b"RCPT TO:<bob@example.net>"])
        text = [formatEvent(e) for e in logged]
        self.assertIn("upstream does not offer DSN now: relaying without NOTIFY, RET", text)
        self.assertEqual(self.stack.factory.capabilities.current.keywords, frozenset())


class SMTPUTF8Tests(ESMTPTestCase):
    @defer.inlineCallbacks
    def test_utf8_addresses_relayed_and_shown_to_the_api(self):
        reply = yield self.transaction(
            "MAIL FROM:<jösé@bücher.example> SMTPUTF8".encode(),
            ["RCPT TO:<zoë@bücher.example>".encode()],
        )
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream_envelope(), [
            "MAIL FROM:<jösé@bücher.example> SMTPUTF8".encode(),
            "RCPT TO:<zoë@bücher.example>".encode(),
        ])
        (request,) = self.stack.api.requests
        self.assertEqual(request.json["from"], "jösé@bücher.example")
        self.assertEqual(request.json["to"], ["zoë@bücher.example"])
        self.assertEqual(request.json["mailParameters"], [{"keyword": "SMTPUTF8", "value": None}])

    @defer.inlineCallbacks
    def test_non_ascii_without_the_parameter_is_553(self):
        client = yield self.stack.session()
        reply = yield client.command("MAIL FROM:<jösé@bücher.example>".encode())
        self.assertEqual((reply.code, reply.text.split()[0]), (553, "5.6.7"))
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        reply = yield client.command("RCPT TO:<zoë@bücher.example>".encode())
        self.assertEqual((reply.code, reply.text.split()[0]), (553, "5.6.7"))
        yield client.close()

    @defer.inlineCallbacks
    def test_still_strict(self):
        client = yield self.stack.session()
        for address in ["jö sé@b.example", "a\u0085b@b.example", "a@b\u00a0c.example"]:
            reply = yield client.command(f"MAIL FROM:<{address}> SMTPUTF8".encode())
            self.assertEqual((reply.code, reply.text.split()[0]), (501, "5.1.3"), address)
        reply = yield client.command(b"MAIL FROM:<j\xc3@b.example> SMTPUTF8")
        self.assertEqual((reply.code, reply.text.split()[0]), (501, "5.1.3"))
        yield client.close()

    @defer.inlineCallbacks
    def test_upstream_that_stopped_offering_it_gets_nothing_and_the_client_a_4xx(self):
        self.upstream.offers = ("DSN",)
        reply = yield self.transaction(
            "MAIL FROM:<jösé@bücher.example> SMTPUTF8".encode(), [b"RCPT TO:<bob@example.net>"])
        self.assertEqual((reply.code, reply.text.split()[0]), (451, "4.6.7"))
        self.assertEqual(self.upstream.messages, [])


class AddressTests(ESMTPTestCase):
    @defer.inlineCallbacks
    def test_quoted_local_part_relayed_as_sent(self):
        reply = yield self.transaction(
            b'MAIL FROM:<"john doe"@example.test>', [b'RCPT TO:<"jane doe"@example.net>'])
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.upstream_envelope(), [
            b'MAIL FROM:<"john doe"@example.test>', b'RCPT TO:<"jane doe"@example.net>'])
        self.assertEqual(self.stack.api.requests[0].json["from"], '"john doe"@example.test')

    @defer.inlineCallbacks
    def test_quoted_local_part_still_strict(self):
        client = yield self.stack.session()
        for address in [b'"a\tb"@example.test', b'"a\rb"@example.test', b'"a\x00b"@example.test']:
            reply = yield client.command(b"MAIL FROM:<" + address + b">")
            self.assertEqual(reply.code, 501, address)
        yield client.close()


class AuthIdTests(ESMTPTestCase):
    config = {"transcript": True}
    @defer.inlineCallbacks
    def test_auth_id_in_the_log_line(self):
        self.stack.api.answer = lambda request: {"allow": True, "authId": "rec-4711"}
        with capturedLogs() as logged:
            reply = yield self.transaction(b"MAIL FROM:<alice@example.com>", [b"RCPT TO:<b@example.net>"])
        self.assertEqual(reply.code, 250)
        (line,) = [formatEvent(e) for e in logged if formatEvent(e).startswith("message delivered")]
        self.assertIn("auth_id='rec-4711'", line)
        transcript = [formatEvent(e) for e in logged if e["log_namespace"] == "smtpproxy.smtp"]
        self.assertIn("[policy authId rec-4711]", " ".join(transcript))

    @defer.inlineCallbacks
    def test_auth_id_of_another_type_makes_the_answer_invalid(self):
        self.stack.api.answer = lambda request: {"allow": True, "authId": 4711}
        reply = yield self.transaction(b"MAIL FROM:<alice@example.com>", [b"RCPT TO:<b@example.net>"])
        self.assertEqual((reply.code, reply.text.split()[0]), (451, "4.3.0"))
        self.assertEqual(self.upstream.messages, [])


class XclientTests(TestCase):
    """C{--upstream_xclient}: the upstream is told the real client before MAIL."""

    @defer.inlineCallbacks
    def start(self, offers):
        self.stack = Stack(reactor, self.mktemp(), upstream_offers=offers, upstream_xclient=True)
        self.addCleanup(self.stack.close)
        yield self.stack.ready()
        self.stack.upstream.commands.clear()

    @defer.inlineCallbacks
    def test_xclient_bytes_then_ehlo_again(self):
        yield self.start(("XCLIENT NAME ADDR PORT PROTO HELO LOGIN",))
        reply = yield self.stack.send(MESSAGE)
        self.assertEqual(reply.code, 250)
        (commands,) = self.stack.upstream.commands
        self.assertRegex(commands[1].decode(), r"^XCLIENT NAME=\[UNAVAILABLE\] ADDR=127\.0\.0\.1 "
                                               r"PORT=\d+ PROTO=ESMTP HELO=client\.example LOGIN=alice$")
        self.assertEqual([commands[0], commands[2]], [b"EHLO proxy.test"] * 2)
        self.assertEqual(commands[3], b"MAIL FROM:<alice@example.com>")
        self.assertEqual(len(self.stack.upstream.messages), 1)

    @defer.inlineCallbacks
    def test_only_the_attributes_announced(self):
        yield self.start(("XCLIENT ADDR HELO",))
        yield self.stack.send(MESSAGE)
        (commands,) = self.stack.upstream.commands
        self.assertEqual(commands[1], b"XCLIENT ADDR=127.0.0.1 HELO=client.example")

    @defer.inlineCallbacks
    def test_not_offered_nothing_sent_and_a_warning(self):
        with capturedLogs() as logged:
            yield self.start(())
        self.assertIn("--upstream_xclient: the upstream does not offer XCLIENT",
                      " ".join(formatEvent(e) for e in logged))
        yield self.stack.send(MESSAGE)
        (commands,) = self.stack.upstream.commands
        self.assertFalse([c for c in commands if c.startswith(b"XCLIENT")])
