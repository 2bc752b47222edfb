"""
Tests for L{smtpproxy.commands}: command lines, MAIL and RCPT arguments,
and the address grammar they share with L{valid_mailbox}.
"""

import unicodedata

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.commands import (
    Command,
    CommandError,
    MailFrom,
    parse_command,
    parse_mail,
    parse_rcpt,
    valid_mailbox,
)
from tests.support.properties import call_each

SYNTAX = (501, "5.5.4")
BAD_ADDRESS = (501, "5.1.3")
UNKNOWN_PARAMETER = (555, "5.5.4")

GOOD_ADDRESSES = [
    "user@example.com",
    "first.last+tag@sub.example.co.uk",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    "user@localhost",
    "user@a-b.example",
    "user@123.example",
    "user@" + "a" * 63 + ".example",
    '"quote\\"d"@example.com',
    '"back\\\\slash"@example.com',
    '"a@b"@example.com',
    '""@example.com',
    '"john doe"@example.com',
    '"john\\ doe"@example.com',
    '"a>b"@example.com',
    '"a\\<b"@example.com',
    '"x> NOTIFY=NEVER"@example.com',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@[ipv6:::ffff:192.0.2.1]",
]

BAD_ADDRESSES = [
    "user",
    "@example.com",
    "user@",
    "user@@example.com",
    "us er@example.com",
    "user@exa mple.com",
    "user\r\n@example.com",
    "user@example.com\r\nRCPT TO:<x@example.com",
    "user\x00@example.com",
    "user\t@example.com",
    "user\x7f@example.com",
    "us>er@example.com",
    "us<er@example.com",
    '"a\rb"@example.com',
    '"unterminated@example.com',
    ".user@example.com",
    "user.@example.com",
    "us..er@example.com",
    "user@example..com",
    "user@.example.com",
    "user@example.com.",
    "user@-example.com",
    "user@example-.com",
    "user@exa_mple.com",
    "user@" + "a" * 64 + ".example",
    "user@" + "a." * 127 + "example",
    "user@[192.0.2.256]",
    "user@[192.0.2]",
    "user@[192.0.2.1",
    "user@192.0.2.1]",
    "user@[IPv6:fe80::1%eth0]",
    "user@[IPv6:2001:db8::g]",
    "user@[IPv4:192.0.2.1]",
    "user@[2001:db8::1]",
    "user@[tag:content]",
    "user@[]",
]


def mail(text):
    return parse_mail(text.encode("latin-1"))


def rcpt(text):
    return parse_rcpt(text.encode("latin-1")).address


class RefusalMixin:
    def assertRefused(self, parse, argument, expected):
        """C{parse(argument)} raises a CommandError with C{expected} code and enhanced code."""
        error = self.assertRaises(CommandError, parse, argument)
        self.assertEqual((error.reply.code, error.reply.text.split()[0]), expected)


class ParseCommandTests(SynchronousTestCase):
    def test_verbAndArgument(self):
        self.assertEqual(parse_command(b"MAIL FROM:<a@example.com>"), Command("MAIL", b"FROM:<a@example.com>"))

    def test_verbUpperCased(self):
        self.assertEqual(parse_command(b"eHlo client.example").verb, "EHLO")

    def test_noArgument(self):
        self.assertEqual(parse_command(b"DATA"), Command("DATA", b""))

    def test_argumentStripped(self):
        """Spaces and tabs around the argument go, so C{DATA } has none."""
        self.assertEqual(parse_command(b"DATA "), Command("DATA", b""))
        self.assertEqual(parse_command(b"HELO \t client.example \t"), Command("HELO", b"client.example"))

    def test_innerSpacesKept(self):
        self.assertEqual(parse_command(b"AUTH PLAIN  abc").argument, b"PLAIN  abc")

    def test_emptyLine(self):
        self.assertEqual(parse_command(b""), Command("", b""))

    def test_leadingSpace(self):
        self.assertEqual(parse_command(b" NOOP").verb, "")

    def test_nonAlphabeticVerb(self):
        for line in [b"MAIL:", b"X-FOO", b"N00P", b"NOOP\r", b"MAIL\tFROM:<a@b>", b"\x00"]:
            self.assertEqual(parse_command(line).verb, "", line)

    def test_nonASCIIVerb(self):
        self.assertEqual(parse_command(b"N\xc3\x96OP").verb, "")
        self.assertEqual(parse_command("\u212aELO".encode()).verb, "")


class ParseMailTests(RefusalMixin, SynchronousTestCase):
    def test_address(self):
        self.assertEqual(mail("FROM:<user@example.com>"), MailFrom("user@example.com"))

    def test_nullSender(self):
        self.assertEqual(mail("FROM:<>"), MailFrom(""))

    def test_keywordCaseInsensitive(self):
        self.assertEqual(mail("from:<a@example.com>").address, "a@example.com")
        self.assertEqual(mail("FrOm:<a@example.com>").address, "a@example.com")

    def test_spacesAfterColon(self):
        self.assertEqual(mail("FROM: <a@example.com>").address, "a@example.com")
        self.assertEqual(mail("FROM:   <>").address, "")

    def test_goodAddresses(self):
        for address in GOOD_ADDRESSES:
            self.assertEqual(mail(f"FROM:<{address}>").address, address)

    def test_sourceRouteDropped(self):
        """RFC 5321 4.1.2: a source route is accepted and ignored."""
        self.assertEqual(mail("FROM:<@a.example,@b.example:user@c.example>").address, "user@c.example")
        self.assertEqual(mail("FROM:<@a.example:user@c.example>").address, "user@c.example")

    def test_badSourceRoute(self):
        for path in [
            "@a.example:",
            "@:user@c.example",
            "@a.example,b.example:user@c.example",
            "@a.example,@:user@c.example",
            "@a..example:user@c.example",
            "@[192.0.2.1]:user@c.example",
            "@a.example user@c.example",
        ]:
            self.assertRefused(mail, f"FROM:<{path}>", BAD_ADDRESS)

    def test_missingFrom(self):
        for argument in ["", "<a@example.com>", "TO:<a@example.com>", "FROM<a@example.com>", "FROM :<a@example.com>"]:
            self.assertRefused(mail, argument, SYNTAX)

    def test_noBrackets(self):
        for argument in ["FROM:a@example.com", "FROM:", "FROM:<a@example.com", "FROM:a@example.com>", "FROM:<a@example.com>x"]:
            self.assertRefused(mail, argument, SYNTAX)

    def test_badAddresses(self):
        for address in BAD_ADDRESSES:
            self.assertRefused(mail, f"FROM:<{address}>", BAD_ADDRESS)

    def test_bracketInside(self):
        self.assertRefused(mail, "FROM:<a>b@example.com>", BAD_ADDRESS)
        self.assertRefused(mail, "FROM:<<a@example.com>>", BAD_ADDRESS)
        self.assertRefused(mail, "FROM:<a@example.com>>", BAD_ADDRESS)

    def test_postmasterIsNoSender(self):
        self.assertRefused(mail, "FROM:<postmaster>", BAD_ADDRESS)

    def test_size(self):
        self.assertEqual(mail("FROM:<a@example.com> SIZE=1000").size, 1000)
        self.assertEqual(mail("FROM:<> size=0").size, 0)

    def test_sizeNotCheckedAgainstALimit(self):
        self.assertEqual(mail("FROM:<> SIZE=99999999999999999999").size, 99999999999999999999)

    def test_body(self):
        self.assertEqual(mail("FROM:<a@example.com> BODY=8BITMIME").body, "8BITMIME")
        self.assertEqual(mail("FROM:<a@example.com> body=7bit").body, "7BIT")

    def test_both(self):
        parsed = mail("FROM:<a@example.com>  BODY=8bitmime   SIZE=12 ")
        self.assertEqual((parsed.address, parsed.size, parsed.body), ("a@example.com", 12, "8BITMIME"))
        self.assertEqual([p.text for p in parsed.parameters], ["BODY=8bitmime", "SIZE=12"])

    def test_malformedParameter(self):
        for parameters in [
            "SIZE",
            "SIZE=",
            "SIZE=abc",
            "SIZE=-1",
            "SIZE=+1",
            "SIZE=1_0",
            "SIZE=1.5",
            "SIZE=\xb2",
            "SIZE=123456789012345678901",
            "SIZE=1 SIZE=1",
            "BODY",
            "BODY=",
            "BODY=BINARYMIME",
            "BODY=8BIT",
            "BODY=7BIT BODY=7BIT",
            "=1",
            "-SIZE=1",
            "SIZE==1",
            "SIZE=1=2",
            "<b@example.com>",
            "SIZE=1\x00",
            "BODY=7BIT\r\nRSET",
            "\xe9=1",
        ]:
            self.assertRefused(mail, f"FROM:<a@example.com> {parameters}", SYNTAX)

    def test_unknownParameter(self):
        for parameters in ["SMTPUTF8", "RET=HDRS", "ENVID=x", "SIZE=1 X-FOO", "FOO=BAR BODY=8BITMIME"]:
            self.assertRefused(mail, f"FROM:<a@example.com> {parameters}", UNKNOWN_PARAMETER)

    def test_addressCheckedBeforeParameters(self):
        self.assertRefused(mail, "FROM:<a b@example.com> SMTPUTF8", BAD_ADDRESS)


class ParseRcptTests(RefusalMixin, SynchronousTestCase):
    def test_address(self):
        self.assertEqual(rcpt("TO:<user@example.com>"), "user@example.com")

    def test_keywordCaseInsensitive(self):
        self.assertEqual(rcpt("to:<a@example.com>"), "a@example.com")

    def test_spacesAfterColon(self):
        self.assertEqual(rcpt("TO:  <a@example.com>"), "a@example.com")

    def test_goodAddresses(self):
        for address in GOOD_ADDRESSES:
            self.assertEqual(rcpt(f"TO:<{address}>"), address)

    def test_postmaster(self):
        """RFC 5321 4.1.1.3: C{<Postmaster>} needs no domain; its case is kept."""
        self.assertEqual(rcpt("TO:<postmaster>"), "postmaster")
        self.assertEqual(rcpt("TO:<PostMaster>"), "PostMaster")

    def test_sourceRouteDropped(self):
        self.assertEqual(rcpt("TO:<@a.example,@b.example:user@c.example>"), "user@c.example")

    def test_nullRecipient(self):
        self.assertRefused(rcpt, "TO:<>", BAD_ADDRESS)

    def test_badAddresses(self):
        for address in BAD_ADDRESSES + ["postmaster "]:
            self.assertRefused(rcpt, f"TO:<{address}>", BAD_ADDRESS)

    def test_missingTo(self):
        for argument in ["", "<a@example.com>", "FROM:<a@example.com>", "T0:<a@example.com>"]:
            self.assertRefused(rcpt, argument, SYNTAX)

    def test_noBrackets(self):
        for argument in ["TO:a@example.com", "TO:", "TO:<a@example.com", "TO:postmaster"]:
            self.assertRefused(rcpt, argument, SYNTAX)

    def test_parameters(self):
        """Without DSN offered, RCPT takes no parameter."""
        for parameters in ["NOTIFY=NEVER", "SIZE=1", "ORCPT=rfc822;a@example.com"]:
            self.assertRefused(rcpt, f"TO:<a@example.com> {parameters}", UNKNOWN_PARAMETER)
        for parameters in ["=", "\xe9"]:
            self.assertRefused(rcpt, f"TO:<a@example.com> {parameters}", SYNTAX)

    def test_trailingSpaces(self):
        self.assertEqual(rcpt("TO:<a@example.com>   "), "a@example.com")


class ValidMailboxTests(SynchronousTestCase):
    def test_goodAddresses(self):
        for address in GOOD_ADDRESSES:
            if " " not in address:
                self.assertTrue(valid_mailbox(address), address)

    def test_badAddresses(self):
        for address in BAD_ADDRESSES:
            self.assertFalse(valid_mailbox(address), address)

    def test_notEmpty(self):
        self.assertFalse(valid_mailbox(""))

    def test_noBracketsOrRoute(self):
        for address in ["<a@example.com>", "@a.example:user@c.example", "postmaster"]:
            self.assertFalse(valid_mailbox(address), address)

    def test_injection(self):
        for address in [
            "a@example.com\r\nRCPT TO:<b@example.com>",
            "a@example.com\nDATA",
            "a@example.com> SIZE=1",
            "a@example.com\x00",
            '"a\r\nb"@example.com',
        ]:
            self.assertFalse(valid_mailbox(address), address)


# Characters that matter to the grammar, so that generated text often parses.
_GRAMMAR = '"\\@.:,[]<> \r\n\x00\t-=abcxyzAZ019!#~IPv6'
_addresses = st.builds(
    "{}@{}".format,
    st.text(alphabet=_GRAMMAR, max_size=12),
    st.one_of(
        st.text(alphabet=_GRAMMAR, max_size=12),
        st.ip_addresses(v=4).map("[{}]".format),
        st.ip_addresses(v=6).map("[IPv6:{}]".format),
    ),
)


class PropertyTests(SynchronousTestCase):
    @given(st.binary())
    def test_parseCommandTotal(self, line):
        command = parse_command(line)
        self.assertTrue(command.verb == "" or command.verb.isalpha() and command.verb.isupper())

    @given(st.binary())
    def test_parseMailRaisesOnlyCommandError(self, argument):
        call_each(parse_mail, [argument, b"FROM:<" + argument, b"FROM:<a@example.com> " + argument],
                  CommandError)

    @given(st.binary())
    def test_parseRcptRaisesOnlyCommandError(self, argument):
        call_each(parse_rcpt, [argument, b"TO:<" + argument], CommandError)

    @given(st.one_of(_addresses, st.text()), st.booleans())
    def test_validMailboxIsSafe(self, address, utf8):
        """
        Whatever valid_mailbox accepts cannot break out of an SMTP command:
        a space only inside a quoted local part, no line break, NUL, other
        control character or angle bracket, ASCII unless UTF-8 is allowed.
        """
        if valid_mailbox(address, utf8):
            self.assertFalse(set(address) & set("\r\n\x00"), address)
            self.assertFalse(any(unicodedata.category(c) == "Cc" for c in address), address)
            self.assertTrue(utf8 or address.isascii(), address)
            if set(address) & set(" <>"):
                self.assertTrue(address.startswith('"'), address)

    @given(_addresses)
    def test_sameGrammarEverywhere(self, address):
        """valid_mailbox accepts exactly the addresses MAIL and RCPT accept."""
        data = address.encode("latin-1", errors="replace")
        try:
            parsed = parse_rcpt(b"TO:<" + data + b">").address
        except CommandError:
            parsed = None
        self.assertEqual(valid_mailbox(address), parsed == address)
        if parsed is not None:
            self.assertEqual(parse_mail(b"FROM:<" + data + b">").address, parsed)
