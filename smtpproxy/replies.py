# -*- test-case-name: tests.test_replies -*-
"""
Pure: the SMTP replies the proxy sends, and the rules for building them.

Every reply but the greeting and EHLO/HELO carries an RFC 3463 enhanced
status code (docs/protocol.rst section 1), so replies are built here, in one place,
instead of as literals scattered over the protocol code.
"""

import re

from attrs import frozen

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@frozen
class Reply:
    """One SMTP reply: a three-digit code and its text (enhanced code included)."""

    code: int
    text: str

    @property
    def temporary(self):
        return 400 <= self.code < 500

    def encode(self):
        """The text as bytes for C{twisted.mail.smtp.SMTP.sendCode}."""
        return self.text.encode("utf-8")


class Refusal(Exception):
    """Raised by the pure parsers: the session answers with C{reply}."""

    def __init__(self, reply):
        super().__init__(reply)
        self.reply = reply


def sanitise(text, limit=200):
    """
    Make foreign text (an API reason, an upstream reply) safe to send as a
    reply: control characters (C0 and C1, CR and LF included, and the
    Unicode line separators) become one space, the
    result is one line of at most C{limit} characters.
    """
    return _CONTROL.sub(" ", text).strip()[:limit].rstrip()


def relayed(code, enhanced, text):
    """
    A reply that carries a foreign C{text}, sanitised, given the enhanced
    code C{enhanced} unless the text already starts with one.
    """
    text = sanitise(text)
    if not _ENHANCED.match(text):
        text = f"{enhanced} {text}" if text else enhanced
    return Reply(code, text)


# Session replies (docs/protocol.rst section 1).
SERVICE_READY_TLS = Reply(220, "2.0.0 Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0 Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8 Authentication credentials invalid")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0 Temporary authentication failure")
AUTH_LOCKED_OUT = Reply(421, "4.7.0 Too many authentication failures, try again later")
SENDER_OK = Reply(250, "2.1.0 Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5 Recipient OK")
RESET_OK = Reply(250, "2.0.0 Reset state")
NOOP_OK = Reply(250, "2.0.0 OK")
VRFY = Reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0 See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT")
BYE = Reply(221, "2.0.0 Bye")
START_DATA = Reply(354, "Start mail input; end with <CRLF>.<CRLF>")
MUST_STARTTLS = Reply(530, "5.7.0 Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0 Authentication required")
DOMAIN_REQUIRED = Reply(501, "5.5.4 EHLO and HELO need a domain name")
UNKNOWN_COMMAND = Reply(500, "5.5.2 Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.6 Line too long")
BARE_LF_LINE = Reply(500, "5.5.2 Line ended by a bare LF; lines end with CRLF")
BAD_SEQUENCE = Reply(503, "5.5.1 Bad sequence of commands")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1 Already authenticated")
NO_ARGUMENT_ALLOWED = Reply(501, "5.5.4 No argument allowed")
ALREADY_TLS = Reply(503, "5.5.1 TLS already active")
NEED_RECIPIENT = Reply(503, "5.5.1 Need RCPT command first")
NEED_SENDER = Reply(503, "5.5.1 Need MAIL command first")
NESTED_MAIL = Reply(503, "5.5.1 Sender already specified")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3 Too many recipients")
AUTH_CANCELLED = Reply(501, "5.0.0 Authentication cancelled")
UNKNOWN_MECHANISM = Reply(504, "5.5.4 Unrecognized authentication mechanism")
TLS_UNAVAILABLE = Reply(454, "4.7.0 TLS not available")
SHUTTING_DOWN = Reply(421, "4.3.2 Service shutting down, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2 Timeout, closing connection")
MAIL_SYNTAX = Reply(501, "5.5.4 Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = Reply(501, "5.5.4 Syntax: RCPT TO:<address> [parameters]")
BAD_ADDRESS = Reply(501, "5.1.3 Bad address syntax")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
BAD_PARAMETER = Reply(501, "5.5.4 Malformed parameter")
UNKNOWN_PARAMETER = Reply(555, "5.5.4 Parameter not recognized or not implemented")
AUTH_SYNTAX = Reply(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
BAD_BASE64 = Reply(501, "5.5.2 Cannot decode base64 response")
BAD_PLAIN = Reply(501, "5.5.2 PLAIN response must be authzid NUL username NUL password")
EMPTY_USERNAME = Reply(501, "5.5.2 Empty username")
USERNAME_TOO_LONG = Reply(501, "5.5.2 Username longer than 256 bytes")
NUL_IN_USERNAME = Reply(501, "5.5.2 NUL in username")

# Message replies (docs/protocol.rst sections 2, 4 and 5).
BARE_LINE_END = Reply(550, "5.6.0 Message contains bare CR or LF")
MESSAGE_TOO_BIG = Reply(552, "5.3.4 Message too big")
HEADER_TOO_BIG = Reply(552, "5.3.4 Header block too big")
HEADER_MEMORY = Reply(452, "4.3.1 Insufficient system storage, try again later")
POLICY_UNAVAILABLE = Reply(451, "4.3.0 Policy service unavailable, try again later")
NO_SMTPUTF8 = Reply(451, "4.6.7 The upstream does not take SMTPUTF8 mail now, try again later")
UPSTREAM_UNAVAILABLE = Reply(451, "4.4.1 Upstream server unavailable, try again later")
LOCAL_ERROR = Reply(451, "4.3.0 Local error in processing, try again later")
