"""
Tests for L{smtpproxy.auth}: AUTH PLAIN and LOGIN decoding.
"""

from base64 import b64encode

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy import replies
from smtpproxy.auth import AuthError, Challenge, Done, Login, start
from tests.support.properties import call_each

USERNAME_PROMPT = b64encode(b"Username:")
PASSWORD_PROMPT = b64encode(b"Password:")
BAD_INPUT = (501, "5.5.2")


def plain(authzid, username, password):
    return b64encode(b"\0".join([authzid, username, password]))


class AuthTestCase(SynchronousTestCase):
    def assertRefused(self, call, argument, expected):
        """C{call(argument)} raises an AuthError with C{expected} code and enhanced code."""
        error = self.assertRaises(AuthError, call, argument)
        self.assertEqual((error.reply.code, error.reply.text.split()[0]), expected)
        return error


class LoginValueTests(SynchronousTestCase):
    def test_passwordNotInRepr(self):
        login = Login("alice", "s3cret-pw")
        self.assertNotIn("s3cret-pw", repr(login))
        self.assertNotIn("s3cret-pw", str(login))
        self.assertNotIn("s3cret-pw", repr(Done(login)))
        self.assertIn("alice", repr(login))

    def test_equality(self):
        self.assertEqual(Login("a", "b"), Login("a", "b"))
        self.assertNotEqual(Login("a", "b"), Login("a", "c"))


class StartTests(AuthTestCase):
    def test_noMechanism(self):
        self.assertRefused(start, b"", (501, "5.5.4"))
        self.assertRefused(start, b"  ", (501, "5.5.4"))

    def test_unknownMechanism(self):
        for argument in [b"CRAM-MD5", b"XOAUTH2 abc", b"PLAINX", b"\xff"]:
            error = self.assertRefused(start, argument, (504, "5.5.4"))
            self.assertEqual(error.reply, replies.UNKNOWN_MECHANISM)

    def test_mechanismCaseInsensitive(self):
        for mechanism in [b"plain", b"Plain", b"login", b"LoGiN"]:
            exchange, step = start(mechanism)
            self.assertIsInstance(step, Challenge)


class PlainTests(AuthTestCase):
    def test_initialResponse(self):
        _, step = start(b"PLAIN " + plain(b"", b"alice", b"pw"))
        self.assertEqual(step, Done(Login("alice", "pw")))

    def test_authzidIgnored(self):
        _, step = start(b"PLAIN " + plain(b"admin", b"alice", b"pw"))
        self.assertEqual(step.login, Login("alice", "pw"))

    def test_continuation(self):
        exchange, step = start(b"PLAIN")
        self.assertEqual(step, Challenge(b""))
        self.assertEqual(exchange.respond(plain(b"", b"alice", b"pw")), Done(Login("alice", "pw")))

    def test_continuationSurroundingSpaces(self):
        exchange, _ = start(b"PLAIN")
        self.assertEqual(exchange.respond(b" " + plain(b"", b"a", b"p") + b"\t").login, Login("a", "p"))

    def test_emptyPassword(self):
        _, step = start(b"PLAIN " + plain(b"", b"alice", b""))
        self.assertEqual(step.login, Login("alice", ""))

    def test_utf8(self):
        _, step = start(b"PLAIN " + plain(b"", "j\u00fcrgen".encode(), "p\u00e4ss".encode()))
        self.assertEqual(step.login, Login("j\u00fcrgen", "p\u00e4ss"))

    def test_invalidUTF8Replaced(self):
        _, step = start(b"PLAIN " + plain(b"", b"al\xffice", b"p\xc3w"))
        self.assertEqual(step.login, Login("al\ufffdice", "p\ufffdw"))

    def test_emptyInitialResponse(self):
        """C{=} is an empty initial response (RFC 4954 4), which lacks PLAIN's fields."""
        error = self.assertRefused(start, b"PLAIN =", BAD_INPUT)
        self.assertEqual(error.reply, replies.BAD_PLAIN)

    def test_badBase64(self):
        for response in [b"not base64!", b"YWxpY2U", b"YW xp", b"YWxp\r\n", b"YQ==YQ==", b"\xc3\xa4"]:
            exchange, _ = start(b"PLAIN")
            error = self.assertRefused(exchange.respond, response, BAD_INPUT)
            self.assertEqual(error.reply, replies.BAD_BASE64)
        self.assertRefused(start, b"PLAIN AGFsaWNlAHB3 extra", BAD_INPUT)

    def test_fieldCount(self):
        for blob in [b"", b"alice", b"alice\0pw", b"\0alice\0pw\0", b"a\0b\0c\0d"]:
            exchange, _ = start(b"PLAIN")
            error = self.assertRefused(exchange.respond, b64encode(blob), BAD_INPUT)
            self.assertEqual(error.reply, replies.BAD_PLAIN)

    def test_emptyUsername(self):
        error = self.assertRefused(start, b"PLAIN " + plain(b"alice", b"", b"pw"), BAD_INPUT)
        self.assertEqual(error.reply, replies.EMPTY_USERNAME)

    def test_usernameLength(self):
        _, step = start(b"PLAIN " + plain(b"", b"u" * 256, b"pw"))
        self.assertEqual(step.login.username, "u" * 256)
        error = self.assertRefused(start, b"PLAIN " + plain(b"", b"u" * 257, b"pw"), BAD_INPUT)
        self.assertEqual(error.reply, replies.USERNAME_TOO_LONG)

    def test_usernameLengthInBytes(self):
        error = self.assertRefused(start, b"PLAIN " + plain(b"", "\u00fc".encode() * 129, b"pw"), BAD_INPUT)
        self.assertEqual(error.reply, replies.USERNAME_TOO_LONG)

    def test_cancel(self):
        exchange, _ = start(b"PLAIN")
        error = self.assertRefused(exchange.respond, b"*", (501, "5.0.0"))
        self.assertEqual(error.reply, replies.AUTH_CANCELLED)


class LoginTests(AuthTestCase):
    def test_prompts(self):
        exchange, step = start(b"LOGIN")
        self.assertEqual(step, Challenge(USERNAME_PROMPT))
        step = exchange.respond(b64encode(b"alice"))
        self.assertEqual(step, Challenge(PASSWORD_PROMPT))
        self.assertEqual(exchange.respond(b64encode(b"pw")), Done(Login("alice", "pw")))

    def test_promptsEncoded(self):
        self.assertEqual(USERNAME_PROMPT, b"VXNlcm5hbWU6")
        self.assertEqual(PASSWORD_PROMPT, b"UGFzc3dvcmQ6")

    def test_initialResponse(self):
        exchange, step = start(b"LOGIN " + b64encode(b"alice"))
        self.assertEqual(step, Challenge(PASSWORD_PROMPT))
        self.assertEqual(exchange.respond(b64encode(b"pw")), Done(Login("alice", "pw")))

    def test_emptyPassword(self):
        exchange, _ = start(b"LOGIN " + b64encode(b"alice"))
        self.assertEqual(exchange.respond(b"").login, Login("alice", ""))

    def test_passwordMayHoldAnything(self):
        exchange, _ = start(b"LOGIN " + b64encode(b"alice"))
        self.assertEqual(exchange.respond(b64encode(b"p\0w\xff")).login, Login("alice", "p\0w\ufffd"))

    def test_utf8(self):
        exchange, _ = start(b"LOGIN " + b64encode("j\u00fcrgen".encode()))
        self.assertEqual(exchange.respond(b64encode(b"\xff")).login, Login("j\u00fcrgen", "\ufffd"))

    def test_emptyUsername(self):
        exchange, _ = start(b"LOGIN")
        error = self.assertRefused(exchange.respond, b"", BAD_INPUT)
        self.assertEqual(error.reply, replies.EMPTY_USERNAME)
        error = self.assertRefused(start, b"LOGIN =", BAD_INPUT)
        self.assertEqual(error.reply, replies.EMPTY_USERNAME)

    def test_usernameLength(self):
        exchange, _ = start(b"LOGIN")
        self.assertEqual(exchange.respond(b64encode(b"u" * 256)), Challenge(PASSWORD_PROMPT))
        exchange, _ = start(b"LOGIN")
        error = self.assertRefused(exchange.respond, b64encode(b"u" * 257), BAD_INPUT)
        self.assertEqual(error.reply, replies.USERNAME_TOO_LONG)

    def test_nulInUsername(self):
        exchange, _ = start(b"LOGIN")
        error = self.assertRefused(exchange.respond, b64encode(b"alice\0admin"), BAD_INPUT)
        self.assertEqual(error.reply, replies.NUL_IN_USERNAME)

    def test_badBase64(self):
        exchange, _ = start(b"LOGIN")
        error = self.assertRefused(exchange.respond, b"alice", BAD_INPUT)
        self.assertEqual(error.reply, replies.BAD_BASE64)
        exchange, _ = start(b"LOGIN " + b64encode(b"alice"))
        error = self.assertRefused(exchange.respond, b"pw!", BAD_INPUT)
        self.assertEqual(error.reply, replies.BAD_BASE64)

    def test_cancel(self):
        for argument in [b"LOGIN", b"LOGIN " + b64encode(b"alice")]:
            exchange, _ = start(argument)
            error = self.assertRefused(exchange.respond, b"*", (501, "5.0.0"))
            self.assertEqual(error.reply, replies.AUTH_CANCELLED)


class PropertyTests(SynchronousTestCase):
    @given(st.binary())
    def test_startRaisesOnlyAuthError(self, argument):
        call_each(start, [argument, b"PLAIN " + argument, b"LOGIN " + argument], AuthError)

    @given(
        st.sampled_from([b"PLAIN", b"LOGIN"]),
        st.lists(st.one_of(st.binary(), st.binary().map(b64encode)), max_size=3),
    )
    def test_respondRaisesOnlyAuthError(self, mechanism, lines):
        """Raw bytes or the base64 of any bytes: a step or an AuthError, never anything else."""
        exchange, step = start(mechanism)
        for line in lines:
            if not isinstance(step, Challenge):
                return
            try:
                step = exchange.respond(line)
            except AuthError:
                return

    @given(st.binary(max_size=300), st.binary(max_size=300))
    def test_loginBounded(self, username, password):
        """A login is never larger than what the client sent."""
        try:
            _, step = start(b"PLAIN " + plain(b"", username, password))
        except AuthError:
            return
        self.assertLessEqual(len(step.login.username), 256)
        self.assertLessEqual(len(step.login.username), len(username))
        self.assertLessEqual(len(step.login.password), len(password))
