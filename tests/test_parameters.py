"""
Tests for L{smtpproxy.parameters} and the SMTPUTF8 and quoted addresses of
L{smtpproxy.commands}: what is taken, what is refused, and that whatever is
taken goes out exactly as it came in.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.commands import CommandError, parse_mail, parse_rcpt, valid_mailbox
from smtpproxy.parameters import (
    Offer,
    ParameterError,
    for_upstream,
    parse_mail_parameters,
    parse_rcpt_parameters,
    xclient_command,
)

DSN = Offer(dsn=True, smtputf8=True)


def codes(error):
    return error.reply.code, error.reply.text.split()[0]


class MailParameterTests(SynchronousTestCase):
    def test_dsn_and_auth(self):
        parsed = parse_mail_parameters("RET=full ENVID=a+2Bb AUTH=alice+40example.com SIZE=10", DSN)
        self.assertEqual([(p.keyword, p.value) for p in parsed], [
            ("RET", "full"), ("ENVID", "a+2Bb"), ("AUTH", "alice+40example.com"), ("SIZE", "10")])

    def test_auth_null(self):
        (auth,) = parse_mail_parameters("AUTH=<>", Offer())
        self.assertEqual(auth.for_api(), {"keyword": "AUTH", "value": "<>"})

    def test_malformed(self):
        for text in ["RET=NONE", "ENVID=a+2b", "ENVID=a+", "ENVID=" + "x" * 101, "AUTH=a+4",
                     "SMTPUTF8=1", "SIZE=1 SIZE=1", "RET=FULL ret=HDRS", "=x", "AUTH"]:
            error = self.assertRaises(ParameterError, parse_mail_parameters, text, DSN)
            self.assertEqual(codes(error), (501, "5.5.4"), text)

    def test_not_offered(self):
        for text in ["RET=FULL", "ENVID=x", "SMTPUTF8", "BINARYMIME", "NOTIFY=NEVER"]:
            error = self.assertRaises(ParameterError, parse_mail_parameters, text, Offer())
            self.assertEqual(codes(error), (555, "5.5.4"), text)


class RcptParameterTests(SynchronousTestCase):
    def test_notify(self):
        for value in ["NEVER", "never", "SUCCESS", "FAILURE,DELAY", "delay,success,failure"]:
            (notify,) = parse_rcpt_parameters(f"NOTIFY={value}", DSN)
            self.assertEqual(notify.value, value)

    def test_bad_notify(self):
        for value in ["NEVER,SUCCESS", "SUCCESS,SUCCESS", "", "SUCCESS,", "ALWAYS", "SUCCESS FAILURE"]:
            self.assertRaises(ParameterError, parse_rcpt_parameters, f"NOTIFY={value}", DSN)

    def test_orcpt(self):
        (orcpt,) = parse_rcpt_parameters("ORCPT=rfc822;bob+2Bx@example.net", DSN)
        self.assertEqual(orcpt.value, "rfc822;bob+2Bx@example.net")
        for value in ["rfc822", ";bob@example.net", "rfc 822;bob", "rfc822;a+2", "rfc822;" + "a" * 500]:
            self.assertRaises(ParameterError, parse_rcpt_parameters, f"ORCPT={value}", DSN)


class ForUpstreamTests(SynchronousTestCase):
    def test_each_where_offered(self):
        mail = parse_mail_parameters("SIZE=5 BODY=8bitmime RET=HDRS SMTPUTF8 AUTH=<>", DSN)
        self.assertEqual(for_upstream(mail, {"SIZE", "8BITMIME", "DSN", "SMTPUTF8", "AUTH"}),
                         (" SIZE=5 BODY=8bitmime RET=HDRS SMTPUTF8", ("AUTH",)))
        self.assertEqual(for_upstream(mail, {"AUTH"}, keep_auth=True),
                         (" AUTH=<>", ("SIZE", "BODY", "RET", "SMTPUTF8")))


class XclientTests(SynchronousTestCase):
    def test_xtext_and_order(self):
        client = {"LOGIN": "al ice+x=y", "ADDR": "IPV6:2001:db8::1", "HELO": "höst", "PORT": None}
        self.assertEqual(xclient_command(client, {"ADDR", "LOGIN", "HELO", "PORT", "NAME"}),
                         "XCLIENT ADDR=IPV6:2001:db8::1 HELO=h+C3+B6st LOGIN=al+20ice+2Bx+3Dy")


class AddressTests(SynchronousTestCase):
    def test_utf8_only_with_smtputf8(self):
        self.assertEqual(parse_mail("FROM:<jösé@bücher.example> SMTPUTF8".encode(), DSN).address,
                         "jösé@bücher.example")
        error = self.assertRaises(CommandError, parse_mail, "FROM:<jösé@b.example>".encode(), DSN)
        self.assertEqual(codes(error), (553, "5.6.7"))
        error = self.assertRaises(
            CommandError, parse_mail, "FROM:<jösé@b.example> SMTPUTF8".encode(), Offer())
        self.assertEqual(codes(error), (553, "5.6.7"))
        self.assertEqual(parse_rcpt("TO:<zoë@b.example>".encode(), DSN, utf8=True).address,
                         "zoë@b.example")

    def test_quoted(self):
        for address in ['"john doe"@example.test', '"a \\"b\\" c"@example.test', '" "@example.test']:
            self.assertEqual(parse_rcpt(f"TO:<{address}>".encode()).address, address)


_PARAMETER_TEXT = st.text(alphabet="RETNVIDOFYSUCAKZLH=+,;<>-0123456789abc \x00\r\né", max_size=40)


class PropertyTests(SynchronousTestCase):
    @given(_PARAMETER_TEXT, st.booleans())
    def test_parameters_total_and_byte_exact(self, text, rcpt):
        """Any text is taken or refused with a reply; what is taken re-serialises exactly."""
        parse = parse_rcpt_parameters if rcpt else parse_mail_parameters
        try:
            parsed = parse(text, DSN)
        except ParameterError as e:
            self.assertIn(e.reply.code, (501, 555))
            return
        self.assertEqual(" ".join(p.text for p in parsed), " ".join(text.split()))
        self.assertEqual(for_upstream(parsed, {"DSN", "SIZE", "8BITMIME", "SMTPUTF8"})[0],
                         "".join(" " + word for word in text.split() if not word.upper().startswith("AUTH")))

    @given(st.binary(max_size=60), st.booleans())
    def test_addresses_total_and_byte_exact(self, data, utf8):
        """Arbitrary bytes never crash the parser; an address taken is sent as it came."""
        argument = b"TO:<" + data + b">"
        try:
            address = parse_rcpt(argument, DSN, utf8=utf8).address
        except CommandError:
            return
        if address != "postmaster" and not data.startswith(b"@"):
            self.assertEqual(address.encode("utf-8"), data)
            self.assertTrue(valid_mailbox(address, utf8))
        self.assertFalse(set(address) & set("\r\n\x00<>"))

    @given(st.text(max_size=30))
    def test_utf8_addresses(self, local):
        """A UTF-8 address valid_mailbox takes, MAIL takes with SMTPUTF8, unchanged."""
        address = local + "@bücher.example"
        if valid_mailbox(address, utf8=True):
            parsed = parse_mail(f"FROM:<{address}> SMTPUTF8".encode(), DSN).address
            self.assertEqual(parsed, address)
