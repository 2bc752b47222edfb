"""
C{--bare_lf}: lines ended by a bare LF, in the session (in memory) and end to end.

Normalize mode (the default) takes them as line ends, in commands and in data, and relays
the message with CRLF line ends; reject mode answers such a command C{500 5.5.2} and such a
message C{550 5.6.0}.  A bare CR is refused in both.  How the bytes are framed is tested in
L{tests.test_framing}; the smuggling vectors in both modes in L{tests.test_smuggling}.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from smtpproxy import Limits, replies
from tests.support.client import connect, start_data
from tests.support.stack import Stack
from tests.support.mail import PLAIN
from tests.support.session import SessionTestCase

BARE_LF_LINE = f"{replies.BARE_LF_LINE.code} {replies.BARE_LF_LINE.text}"
BARE_LINE_END = (replies.BARE_LINE_END.code, replies.BARE_LINE_END.text)
LF_MESSAGE = b"From: alice@example.com\nSubject: hi\n  folded\n\nHello.\n.\n..two\n.x\n\r\n.\r\n"
"""An LF-only message as C{curl --upload-file} sends it: curl adds the final CRLF.CRLF."""
RELAYED = (b"From: alice@example.com\r\nSubject: hi\r\n  folded\r\nX-Policy: checked\r\n\r\n"
           b"Hello.\r\n.\r\n.two\r\nx\r\n\r\n")
"""What the upstream records of L{LF_MESSAGE} (dots unstuffed, as it reads them)."""
API_HEADERS = [{"name": "From", "value": "alice@example.com"},
               {"name": "Subject", "value": "hi  folded"}]


class NormalizeSessionTests(SessionTestCase):
    def test_lf_commands_answered(self):
        """C{printf 'EHLO x\\nNOOP\\n'}: both answered at once, in order."""
        lines = self.send(b"EHLO x\nNOOP\n")
        self.assertEqual((lines[0], lines[-1]), ("250-proxy.test Hello", "250 2.0.0 OK"))

    def test_lf_only_transaction(self):
        """Pipelined LF-only commands and data: delivered with CRLF, headers split right."""
        self.login()
        self.assertEqual(len(self.send(b"MAIL FROM:<alice@example.com>\nRCPT TO:<bob@example.net>\n"
                                       b"DATA\n")), 3)
        lines = self.send(b"Subject: hi\nTo: bob@example.net\n\n.\nbody\n\r\n.\r\nNOOP\n")
        self.assertEqual(lines, ["250 2.0.0 Ok: queued as ABC", "250 2.0.0 OK"])
        self.assertEqual(self.policy.requests[0]["headers"],
                         [{"name": "Subject", "value": "hi"}, {"name": "To", "value": "bob@example.net"}])
        self.assertEqual(self.factory.deliveries[0][2],
                         b"Subject: hi\r\nTo: bob@example.net\r\nX-Checked: yes\r\n\r\n..\r\nbody\r\n\r\n")


class RejectSessionTests(SessionTestCase):
    limits = Limits(bare_lf="reject")

    def test_bare_lf_command(self):
        """Each line gets C{500 5.5.2} at once, instead of silence until the timeout."""
        self.assertEqual(self.send(b"EHLO x\nNOOP\n"), [BARE_LF_LINE, BARE_LF_LINE])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 OK"])

    def test_bare_lf_ends_an_auth_exchange(self):
        """An AUTH response ended by a bare LF is no response: the client is not logged in."""
        self.tls()
        self.send(b"AUTH PLAIN\r\n")
        lines = self.send(PLAIN + b"\nMAIL FROM:<alice@example.com>\r\n")
        self.assertEqual(lines, [BARE_LF_LINE, "530 5.7.0 Authentication required"])

    def test_bare_lf_data_refused(self):
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: x\n\nb\n.\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines[1:], ["550 5.6.0 Message contains bare CR or LF", "250 2.0.0 OK"])
        self.assertEqual(self.factory.deliveries, [])


class BareCRTests:
    """For both modes: a L{Stack} with C{limits}."""

    limits = Limits()

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), self.limits)
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def send_data(self, data):
        """Send C{data} after a 354 on a logged-in session; fires with the reply to it."""
        client = yield self.stack.session()
        self.addCleanup(client.close)
        yield start_data(client, b"alice@example.com", b"bob@example.net")
        client.send(data)
        (reply,) = yield client.replies(1)
        return reply

    @defer.inlineCallbacks
    def test_bare_cr_refused(self):
        reply = yield self.send_data(b"Subject: x\r\n\r\nhi\r.\rMAIL FROM:<evil@example.com>\r\n.\r\n")
        self.assertEqual((reply.code, reply.text), BARE_LINE_END)
        self.assertEqual(self.stack.upstream.messages, [])


class NormalizeEndToEndTests(BareCRTests, TestCase):
    @defer.inlineCallbacks
    def test_lf_only_message(self):
        """Relayed with CRLF line ends, the lone dot intact; the API sees each header."""
        reply = yield self.send_data(LF_MESSAGE)
        self.assertEqual(reply.code, 250)
        (request,) = self.stack.api.requests
        self.assertEqual(request.json["headers"], API_HEADERS)
        (message,) = self.stack.upstream.messages
        self.assertEqual(message.data, RELAYED)

    @defer.inlineCallbacks
    def test_lf_commands_before_tls(self):
        client = yield connect(reactor, self.stack.port)
        self.addCleanup(client.close)
        client.send(b"EHLO x\nNOOP\n")
        ehlo, noop = yield client.replies(2)
        self.assertEqual((ehlo.code, noop.code, noop.text), (250, 250, replies.NOOP_OK.text))


class RejectEndToEndTests(BareCRTests, TestCase):
    limits = Limits(bare_lf="reject")

    @defer.inlineCallbacks
    def test_lf_only_message_refused(self):
        reply = yield self.send_data(LF_MESSAGE)
        self.assertEqual((reply.code, reply.text), BARE_LINE_END)
        self.assertEqual(self.stack.upstream.messages, [])

    @defer.inlineCallbacks
    def test_bare_lf_commands(self):
        client = yield connect(reactor, self.stack.port)
        self.addCleanup(client.close)
        client.send(b"EHLO x\nNOOP\n")
        got = yield client.replies(2)
        self.assertEqual([(r.code, r.text) for r in got],
                         [(replies.BARE_LF_LINE.code, replies.BARE_LF_LINE.text)] * 2)
        reply = yield client.command(b"NOOP")
        self.assertEqual(reply.code, 250)
