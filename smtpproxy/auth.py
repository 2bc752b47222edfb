# -*- test-case-name: tests.test_auth -*-
"""
Pure: decoding of AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616).

The proxy does not verify credentials itself: the login API judges them
at AUTH (C{--auth_api}), or else the policy API with each message.  So
every well-formed exchange ends in a L{Login}, and all that can go wrong
here is malformed input, refused with a 501 by the session before
anything is recorded.

Use::

    exchange, step = start(argument)
    while isinstance(step, Challenge):
        ...send b"334 " + step.prompt, read a line...
        step = exchange.respond(line)
    login = step.login

Either call may raise L{AuthError}; the exchange is then over.
"""

import base64
import binascii

from attrs import field, frozen

from smtpproxy import replies

_MAX_USERNAME = 256  # bytes, docs/protocol.rst section 1
_USERNAME_PROMPT = base64.b64encode(b"Username:")
_PASSWORD_PROMPT = base64.b64encode(b"Password:")


class AuthError(replies.Refusal):
    """An AUTH exchange the session must end with C{reply}."""


@frozen
class Login:
    """
    Credentials as the client sent them, decoded as UTF-8 with invalid
    bytes replaced (docs/protocol.rst section 3).  The password is kept out of C{repr}
    so that no log line or traceback can show it.
    """

    username: str
    password: str = field(repr=False)


@frozen
class Challenge:
    """Send C{334 } + C{prompt} (already base64) and pass the answer on."""

    prompt: bytes


@frozen
class Done:
    """The exchange is complete."""

    login: Login


class PlainExchange:
    """PLAIN (RFC 4616): one response, C{authzid NUL authcid NUL passwd}."""

    mechanism = "PLAIN"
    first = Challenge(b"")

    def respond(self, line: bytes) -> Done:
        fields = _decode(line).split(b"\0")
        if len(fields) != 3:
            raise AuthError(replies.BAD_PLAIN)
        _authzid, username, password = fields  # authzid ignored: docs/protocol.rst section 1
        return Done(Login(_username(username), _text(password)))


class LoginExchange:
    """
    LOGIN (draft-murchison-sasl-login): the username and then the password,
    each answering a prompt; an initial response is the username.
    """

    mechanism = "LOGIN"
    first = Challenge(_USERNAME_PROMPT)

    def __init__(self):
        self._username = None

    def respond(self, line: bytes) -> Challenge | Done:
        data = _decode(line)
        if self._username is None:
            self._username = _username(data)
            return Challenge(_PASSWORD_PROMPT)
        return Done(Login(self._username, _text(data)))


_MECHANISMS = {b"PLAIN": PlainExchange, b"LOGIN": LoginExchange}


def start(argument: bytes) -> tuple[PlainExchange | LoginExchange, Challenge | Done]:
    """
    Begin an exchange from the AUTH command's argument: a mechanism name
    (any case) and an optional initial response, where C{=} stands for an
    empty one (RFC 4954 section 4).
    """
    words = argument.split(maxsplit=1)
    if not words:
        raise AuthError(replies.AUTH_SYNTAX)
    mechanism = _MECHANISMS.get(words[0].upper())
    if mechanism is None:
        raise AuthError(replies.UNKNOWN_MECHANISM)
    exchange = mechanism()
    if len(words) == 1:
        return exchange, exchange.first
    initial = words[1]
    return exchange, exchange.respond(b"" if initial == b"=" else initial)


def _decode(line):
    """
    A client response: C{*} cancels (RFC 4954 section 4); anything else
    must be strict base64, so that stray bytes are refused rather than
    silently dropped from the credentials.
    """
    line = line.strip(b" \t")
    if line == b"*":
        raise AuthError(replies.AUTH_CANCELLED)
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error:
        raise AuthError(replies.BAD_BASE64) from None


def _username(data):
    """
    The username, which goes into the API request and the logs: it must be
    there, bounded, and free of NUL (which PLAIN uses as its separator).
    """
    if not data:
        raise AuthError(replies.EMPTY_USERNAME)
    if len(data) > _MAX_USERNAME:
        raise AuthError(replies.USERNAME_TOO_LONG)
    if b"\0" in data:
        raise AuthError(replies.NUL_IN_USERNAME)
    return _text(data)


def _text(data):
    """Decoded for the JSON API request; invalid UTF-8 becomes U+FFFD (docs/protocol.rst section 3)."""
    return data.decode("utf-8", errors="replace")
