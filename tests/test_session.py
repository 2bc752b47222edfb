"""
Tests for L{smtpproxy.session} over an in-memory transport: the client
dialogue of docs/protocol.rst sections 1 and 2, with the policy API and the upstream
replaced by recorders.
"""

import base64

from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy import replies
from smtpproxy.answer import Decision
from smtpproxy.config import Limits
from tests.support.mail import PLAIN
from tests.support.session import ALLOW, QUEUED, SessionTestCase

class GreetingAndTLSTests(SessionTestCase):
    def test_greeting(self):
        self.assertEqual(self.transport.value(), b"220 proxy.test ESMTP smtpproxy\r\n")

    def test_no_nagle(self):
        """Replies go out at once, not ~40 ms later behind TLS session tickets."""
        self.assertTrue(self.transport.no_delay)

    def test_ehlo_before_tls(self):
        lines = self.send(b"EHLO client.test\r\n")
        self.assertEqual(lines, [
            "250-proxy.test Hello",
            "250-STARTTLS",
            "250-PIPELINING",
            "250-8BITMIME",
            "250-SIZE 52428800",
            "250 ENHANCEDSTATUSCODES",
        ])

    def test_commands_need_tls_first(self):
        """530 takes precedence over any syntax or sequence error."""
        for command in [b"AUTH PLAIN " + PLAIN, b"AUTH", b"MAIL FROM:<a@b.c>", b"MAIL",
                        b"RCPT TO:<a@b.c>", b"DATA", b"DATA x"]:
            self.assertEqual(self.send(command + b"\r\n"),
                             ["530 5.7.0 Must issue a STARTTLS command first"], command)

    def test_starttls_discards_pipelined_plaintext(self):
        """CVE-2011-0411: nothing pipelined behind STARTTLS is executed."""
        lines = self.send(b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(lines[-1], "220 2.0.0 Ready to start TLS")
        self.assertEqual(self.transport.tls_started_at, len(self.transport.value()))

    def test_starttls_forgets_state(self):
        """RFC 3207 4.2: a login made before STARTTLS does not survive it."""
        self.tls()
        self.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.session.startedTLS = False
        self.send(b"STARTTLS\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c>\r\n"),
                         ["530 5.7.0 Authentication required"])

    def test_starttls_argument_and_repeat(self):
        self.assertEqual(self.send(b"STARTTLS now\r\n"), ["501 5.5.4 No argument allowed"])
        self.tls()
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["503 5.5.1 TLS already active"])

    def test_ehlo_after_tls(self):
        self.tls()
        lines = self.send(b"EHLO client.test\r\n")
        self.assertIn("250 AUTH PLAIN LOGIN", lines)
        self.assertNotIn("250-STARTTLS", lines)

    def test_pretls_timeout(self):
        self.clock.advance(self.limits.pretls_timeout)
        self.assertEqual(self.transport.value().split(b"\r\n")[-2], b"421 4.4.2 Timeout, closing connection")
        self.assertTrue(self.transport.disconnecting)


class AuthTests(SessionTestCase):
    def test_mail_needs_auth(self):
        self.tls()
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c>\r\n"), ["530 5.7.0 Authentication required"])

    def test_plain_with_continuation(self):
        self.tls()
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(PLAIN + b"\r\n"), ["235 2.7.0 Authentication successful"])

    def test_login(self):
        self.tls()
        self.assertEqual(self.send(b"auth login\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(base64.b64encode(b"alice") + b"\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(base64.b64encode(b"pw") + b"\r\n"),
                         ["235 2.7.0 Authentication successful"])

    def test_malformed_keeps_session_usable(self):
        self.tls()
        self.assertTrue(self.send(b"AUTH PLAIN !!!\r\n")[0].startswith("501 "))
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication cancelled"])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 OK"])
        self.assertEqual(self.send(b"AUTH CRAM-MD5\r\n")[0][:10], "504 5.5.4 ")

    def test_auth_twice(self):
        self.login()
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN + b"\r\n"), ["503 5.5.1 Already authenticated"])


class CommandTests(SessionTestCase):
    def test_simple_commands(self):
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 OK"])
        self.assertEqual(self.send(b"VRFY bob\r\n")[0][:10], "252 2.5.0 ")
        self.assertEqual(self.send(b"HELP\r\n")[0][:10], "214 2.0.0 ")
        self.assertEqual(self.send(b"RSET\r\n"), ["250 2.0.0 Reset state"])
        self.assertEqual(self.send(b"RSET x\r\n"), ["501 5.5.4 No argument allowed"])
        self.assertEqual(self.send(b"FOO\r\n"), ["500 5.5.2 Command not recognized"])
        self.assertEqual(self.send(b"QUIT\r\n"), ["221 2.0.0 Bye"])
        self.assertTrue(self.transport.disconnecting)

    def test_greeting_needs_a_name(self):
        self.assertEqual(self.send(b"EHLO\r\n"), ["501 5.5.4 EHLO and HELO need a domain name"])
        self.assertEqual(self.send(b"HELO \r\n"), ["501 5.5.4 EHLO and HELO need a domain name"])
        self.assertEqual(self.send(b"HELO c.test\r\n"), ["250 proxy.test Hello"])

    def test_no_private_twisted_command(self):
        """Twisted's own do_UNKNOWN and friends are not reachable."""
        self.assertEqual(self.send(b"UNKNOWN\r\n"), ["500 5.5.2 Command not recognized"])

    def test_overlong_command(self):
        self.assertEqual(self.send(b"NOOP " + b"x" * 3000 + b"\r\nNOOP\r\n"),
                         ["500 5.5.6 Line too long", "250 2.0.0 OK"])

    def test_sequence_errors(self):
        self.login()
        self.assertEqual(self.send(b"RCPT TO:<b@c.d>\r\n"), ["503 5.5.1 Need MAIL command first"])
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Need RCPT command first"])
        self.send(b"MAIL FROM:<a@b.c>\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c>\r\n"), ["503 5.5.1 Sender already specified"])
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Need RCPT command first"])
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN + b"\r\n")[0][:4], "503 ")

    def test_declared_size_over_limit(self):
        self.login()
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c> SIZE=52428801\r\n"),
                         ["552 5.3.4 Message too big"])
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c> size=52428800\r\n"), ["250 2.1.0 Sender OK"])

    def test_null_sender(self):
        self.login()
        self.assertEqual(self.send(b"MAIL FROM:<>\r\n"), ["250 2.1.0 Sender OK"])

    def test_rset_keeps_login(self):
        self.envelope()
        self.send(b"RSET\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@b.c>\r\n"), ["250 2.1.0 Sender OK"])


class RecipientLimitTests(SessionTestCase):
    limits = Limits(max_recipients=2)

    def test_too_many_recipients(self):
        """452 4.5.3 past the limit; the transaction goes on."""
        self.envelope(b"a@x.y", b"b@x.y")
        self.assertEqual(self.send(b"RCPT TO:<c@x.y>\r\n"), ["452 4.5.3 Too many recipients"])
        self.send(b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(self.policy.requests[0]["to"], ["a@x.y", "b@x.y"])


class MessageTests(SessionTestCase):
    def test_whole_path(self):
        """The API sees the envelope and headers; the upstream the rewritten message."""
        self.envelope(b"bob@example.net", b"carol@example.org")
        self.assertEqual(self.send(b"DATA\r\n")[0][:4], "354 ")
        lines = self.send(b"Subject: hi\r\n there\r\nX-Checked: no\r\n\r\n..dot\r\n.\r\n")
        self.assertEqual(lines, ["250 2.0.0 Ok: queued as ABC"])
        request = self.policy.requests[0]
        self.assertEqual(request["username"], "alice")
        self.assertEqual(request["password"], "s3cret")
        self.assertEqual(request["from"], "alice@example.com")
        self.assertEqual(request["to"], ["bob@example.net", "carol@example.org"])
        self.assertEqual(request["headers"], [{"name": "Subject", "value": "hi there"},
                                              {"name": "X-Checked", "value": "no"}])
        self.assertEqual(request["helo"], "client.test")
        self.assertEqual(self.factory.deliveries, [(
            "alice@example.com", ["bob@example.net", "carol@example.org"],
            b"Subject: hi\r\n there\r\nX-Checked: yes\r\n\r\n..dot\r\n",
        )])

    def test_denied(self):
        self.policy.answer = Decision(reply=replies.Reply(550, "5.7.1 no"), headers=(), sender=None)
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.assertEqual(lines[-1], "550 5.7.1 no")
        self.assertEqual(self.factory.deliveries, [])

    def test_body_parameter_goes_upstream(self):
        """RFC 6152: an 8-bit message stays marked as one, as the client wrote it."""
        self.login()
        self.send(b"MAIL FROM:<a@b.c> BODY=8bitmime\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: x\r\n\r\n\xe9\r\n.\r\n")
        self.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: y\r\n\r\nb\r\n.\r\n")
        self.assertEqual(self.factory.mail_parameters, [("BODY=8bitmime",), ()])

    def test_api_sender_replaces_envelope_sender(self):
        self.policy.answer = Decision(reply=None, headers=(), sender="bounce@example.com")
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.assertEqual(self.factory.deliveries[0][0], "bounce@example.com")

    def test_pipelined_quit_waits_for_the_data_reply(self):
        """docs/twisted.rst fight F: QUIT after the dot is answered after DATA's reply."""
        self.factory.outcome = Deferred()
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\nQUIT\r\n")
        self.assertEqual(lines, ["354 Start mail input; end with <CRLF>.<CRLF>"])
        self.assertFalse(self.transport.disconnecting)
        self.transport.clear()
        self.factory.outcome.callback(QUEUED)
        self.assertEqual(self.transport.value(), b"250 2.0.0 Ok: queued as ABC\r\n221 2.0.0 Bye\r\n")

    def test_no_timeout_while_delivering(self):
        self.factory.outcome = Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.clock.advance(self.limits.idle_timeout * 10)
        self.assertFalse(self.transport.disconnecting)
        self.factory.outcome.callback(QUEUED)
        self.clock.advance(self.limits.idle_timeout)
        self.assertTrue(self.transport.disconnecting)

    def test_several_messages_per_connection(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: 1\r\n\r\nb\r\n.\r\n")
        self.send(b"MAIL FROM:<x@y.z>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nSubject: 2\r\n\r\nb\r\n.\r\n")
        self.assertEqual(len(self.factory.deliveries), 2)
        self.assertEqual(self.policy.requests[1]["to"], ["c@d.e"])
        self.assertEqual(self.policy.requests[1]["from"], "x@y.z")

    def test_bare_cr_refused(self):
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: x\r\n\r\nb\r.\rMAIL FROM:<e@v.il>\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines[1:], ["550 5.6.0 Message contains bare CR or LF", "250 2.0.0 OK"])
        self.assertEqual(self.factory.deliveries, [])

    def test_no_header_smuggling_behind_a_continuation_line(self):
        """
        A message starting with a continuation line has no header for the
        API; upstream, an empty line keeps what follows out of the headers.
        """
        self.envelope()
        self.send(b"DATA\r\n \r\nFrom: ceo@bank.example\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(self.policy.requests[0]["headers"], [])
        self.assertEqual(self.factory.deliveries[0][2],
                         b"X-Checked: yes\r\n\r\n \r\nFrom: ceo@bank.example\r\n\r\nbody\r\n")

    def test_api_latency_is_the_api_s(self):
        """The API's time is measured when it answers, not when the body ends."""
        self.policy.answer = Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nfirst part\r\n")
        self.clock.advance(1)
        self.policy.answer.callback(ALLOW)
        self.clock.advance(25)
        self.send(b"rest\r\n.\r\n")
        self.assertEqual(self.factory.metrics.api_latency._sum.get(), 1)

    def test_headers_only_message(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n.\r\n")
        self.assertEqual(self.policy.requests[0]["headers"], [{"name": "Subject", "value": "x"}])
        self.assertEqual(self.factory.deliveries[0][2], b"Subject: x\r\nX-Checked: yes\r\n")

    def test_hang_up_mid_body(self):
        """The API call is cancelled and nothing is delivered."""
        self.policy.answer = Deferred()
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\npart of the bo")
        self.assertEqual(len(self.policy.requests), 1)
        self.session.connectionLost(None)
        self.assertTrue(self.policy.answer.called)
        self.assertEqual(self.factory.deliveries, [])


class SizeLimitTests(SessionTestCase):
    limits = Limits(max_message_size=100, max_header_size=50)

    def test_message_too_big(self):
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: x\r\n\r\n" + b"y" * 200 + b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines[1:], ["552 5.3.4 Message too big", "250 2.0.0 OK"])
        self.assertEqual(self.factory.deliveries, [])

    def test_header_too_big(self):
        self.envelope()
        lines = self.send(b"DATA\r\nSubject: " + b"y" * 60 + b"\r\n\r\nb\r\n.\r\n")
        self.assertEqual(lines[1:], ["552 5.3.4 Header block too big"])
        self.assertEqual(self.policy.requests, [])


class TranscriptTests(SessionTestCase):
    """The smtplog: every command and reply, AUTH data masked, no password."""

    credentials = False

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        super().setUp()

    def config(self, **changes):
        return super().config(transcript=True, log_credentials=self.credentials, **changes)

    def transcript(self):
        return [formatEvent(e) for e in self.events if e["log_namespace"] == "smtpproxy.smtp"]

    def everything(self):
        return "\n".join(formatEvent(e) for e in self.events)

    def test_commands_and_replies(self):
        self.send(b"NOOP\r\n")
        self.assertEqual(self.transcript(), [
            "1 < [connection from 192.168.1.1]", "1 > 220 proxy.test ESMTP smtpproxy",
            "1 < NOOP", "1 > 250 2.0.0 OK"])

    def test_message_content_not_logged(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: secret plans\r\n\r\nb\r\n.\r\n")
        self.assertIn("1 < [message data, 28 bytes]", self.transcript())
        self.assertNotIn("secret plans", self.everything())

    def test_auth_line(self):
        self.tls()
        self.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertIn("1 < AUTH PLAIN [REDACTED]", self.transcript())
        self.assertNotIn(PLAIN.decode(), self.everything())

    def test_auth_line_with_a_tab(self):
        """AUTH's argument splits on any white space, and so does the mask."""
        self.tls()
        self.send(b"AUTH PLAIN\t" + PLAIN + b"\r\n")
        self.assertIn("1 < AUTH PLAIN [REDACTED]", self.transcript())
        self.assertNotIn(PLAIN.decode(), self.everything())

    def test_auth_continuations(self):
        self.tls()
        self.send(b"AUTH LOGIN\r\n" + base64.b64encode(b"bob") + b"\r\n" + base64.b64encode(b"pw") + b"\r\n")
        self.assertEqual(self.transcript().count("1 < [REDACTED]"), 2)
        self.assertNotIn(base64.b64encode(b"pw").decode(), self.everything())

    def test_unrecognized_lines(self):
        """A confused client's credentials sent as commands stay out of the log."""
        self.tls()
        self.send(base64.b64encode(b"my password") + b"\r\n")
        self.assertIn("1 < [unrecognized command, 16 bytes]", self.transcript())
        self.assertNotIn(base64.b64encode(b"my password").decode(), self.everything())

    def test_no_password_in_any_log(self):
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.assertIn("policy=allow", self.everything())
        self.assertNotIn("s3cret", self.everything())
        self.assertNotIn(PLAIN.decode(), self.everything())


class CredentialsTranscriptTests(TranscriptTests):
    """With --credentials the smtplog shows AUTH data as received."""

    credentials = True

    def test_auth_line(self):
        self.tls()
        self.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertIn("1 < AUTH PLAIN " + PLAIN.decode(), self.transcript())

    def test_auth_continuations(self):
        self.tls()
        self.send(b"AUTH LOGIN\r\n" + base64.b64encode(b"bob") + b"\r\n")
        self.assertIn("1 < " + base64.b64encode(b"bob").decode(), self.transcript())

    def test_auth_line_with_a_tab(self):
        self.tls()
        self.send(b"AUTH PLAIN\t" + PLAIN + b"\r\n")
        self.assertIn("1 < AUTH PLAIN\\x09" + PLAIN.decode(), self.transcript())

    def test_unrecognized_lines(self):
        self.send(b"HELLO\r\n")
        self.assertIn("1 < HELLO", self.transcript())

    def test_no_password_in_any_log(self):
        """Only the transcript has it."""
        self.envelope()
        self.send(b"DATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        others = [formatEvent(e) for e in self.events if e["log_namespace"] != "smtpproxy.smtp"]
        self.assertNotIn("s3cret", "\n".join(others))
        self.assertNotIn(PLAIN.decode(), "\n".join(others))


class ClientAddressTests(SynchronousTestCase):
    """The address that limits, logs and the API see."""

    def test_forms(self):
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        from smtpproxy.session import _host

        self.assertEqual(_host(IPv4Address("TCP", "192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(_host(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(_host(IPv6Address("TCP", "2001:db8::1", 1)), "2001:db8::1")
        self.assertEqual(_host(UNIXAddress(b"/run/s")), str(UNIXAddress(b"/run/s")))
