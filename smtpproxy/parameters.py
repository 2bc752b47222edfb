# -*- test-case-name: tests.test_parameters -*-
"""
Pure: the ESMTP parameters of MAIL and RCPT, checked on the way in and
chosen on the way out.

A client may only use what the proxy offered it in EHLO: C{SIZE}, C{BODY}
(RFC 1870, RFC 6152) and C{AUTH} (RFC 4954 section 5) always, C{DSN}'s
C{RET}, C{ENVID}, C{NOTIFY} and C{ORCPT} (RFC 3461) and C{SMTPUTF8}
(RFC 6531) only while the upstream offers them.  Anything else is
C{555 5.5.4}; a malformed or repeated parameter is C{501 5.5.4}.

A parameter is kept with the text the client sent, so what goes upstream
is that text byte for byte (L{for_upstream}), and the policy API sees each
keyword upper-cased with its value as sent.
"""

import re

from attrs import frozen

from smtpproxy import replies

_PARAMETER = re.compile(r"(?P<keyword>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[!-<>-~]+))?")
# RFC 3461 section 4: xchar is any printable ASCII but "+" and "=";
# hexchar is "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")  # RFC 1870: size-value ::= 1*20DIGIT
_BODY_VALUES = frozenset({"7BIT", "8BITMIME"})  # BINARYMIME is not offered
_RET_VALUES = frozenset({"FULL", "HDRS"})
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_MAX_ENVID = 100  # RFC 3461 section 4.4
_MAX_ORCPT = 500  # RFC 3461 section 4.2

_NEEDS = {"SIZE": "SIZE", "BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8",
          "RET": "DSN", "ENVID": "DSN", "NOTIFY": "DSN", "ORCPT": "DSN"}
"""The EHLO keyword an upstream must offer to be sent each parameter."""

DSN_MAIL = frozenset({"RET", "ENVID"})
DSN_RCPT = frozenset({"NOTIFY", "ORCPT"})
"""The DSN parameters, which go upstream only to an upstream offering DSN."""


class ParameterError(replies.Refusal):
    """A parameter the session must refuse with C{reply}."""


@frozen
class Parameter:
    """
    One ESMTP parameter.

    @ivar keyword: upper-cased.
    @ivar value: as sent, or C{None} for a keyword without C{=}.
    @ivar text: the whole parameter exactly as sent.
    """

    keyword: str
    value: str | None
    text: str

    def for_api(self):
        """The policy API's C{{"keyword": ..., "value": ...}} object."""
        return {"keyword": self.keyword, "value": self.value}


@frozen
class Offer:
    """What the proxy offered this client beyond the extensions it always offers."""

    dsn: bool = False
    smtputf8: bool = False


def _xtext(value, limit=None):
    return _XTEXT.fullmatch(value) is not None and (limit is None or len(value) <= limit)


def unxtext(value):
    """The text an xtext (already checked) stands for."""
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), value)


def _notify(value):
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return True
    return len(set(words)) == len(words) and set(words) <= _NOTIFY_VALUES


def _orcpt(value):
    addr_type, semicolon, address = value.partition(";")
    return (bool(semicolon) and _ATOM.fullmatch(addr_type) is not None
            and _xtext(address) and len(value) <= _MAX_ORCPT)


# Each keyword's check of its value; None: the keyword takes no value.
_MAIL_CHECKS = {
    "SIZE": lambda v: _SIZE_VALUE.fullmatch(v) is not None,
    "BODY": lambda v: v.upper() in _BODY_VALUES,
    "AUTH": lambda v: v == "<>" or _xtext(v),
}
_DSN_MAIL_CHECKS = {
    "RET": lambda v: v.upper() in _RET_VALUES,
    "ENVID": lambda v: _xtext(v, _MAX_ENVID),
}
_DSN_RCPT_CHECKS = {"NOTIFY": _notify, "ORCPT": _orcpt}


def _mail_checks(offer):
    checks = dict(_MAIL_CHECKS)
    if offer.dsn:
        checks.update(_DSN_MAIL_CHECKS)
    if offer.smtputf8:
        checks["SMTPUTF8"] = None
    return checks


def parse_mail_parameters(text: str, offer: Offer) -> tuple[Parameter, ...]:
    """The parameters after C{MAIL FROM:<...>}, checked against what was offered."""
    return _parse(text, _mail_checks(offer))


def parse_rcpt_parameters(text: str, offer: Offer) -> tuple[Parameter, ...]:
    """The parameters after C{RCPT TO:<...>}: only DSN's, where offered."""
    return _parse(text, _DSN_RCPT_CHECKS if offer.dsn else {})


def _parse(text, checks):
    """
    Space-separated C{keyword[=value]}s (RFC 5321 section 4.1.2); each
    keyword at most once.

    @raise ParameterError: 555 for a keyword not in C{checks}, 501 for a
        malformed, misvalued or repeated one.
    """
    parameters = []
    for word in filter(None, text.split(" ")):
        match = _PARAMETER.fullmatch(word)
        if match is None:
            raise ParameterError(replies.BAD_PARAMETER)
        keyword, value = match["keyword"].upper(), match["value"]
        if keyword not in checks:
            raise ParameterError(replies.UNKNOWN_PARAMETER)
        check = checks[keyword]
        valid = value is None if check is None else value is not None and check(value)
        if not valid or any(p.keyword == keyword for p in parameters):
            raise ParameterError(replies.BAD_PARAMETER)
        parameters.append(Parameter(keyword, value, word))
    return tuple(parameters)


def xtext(text):
    """RFC 3461 xtext: printable ASCII but C{+} and C{=} as is, every other byte as C{+HH}."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in b"+=" else f"+{b:02X}" for b in text.encode("utf-8"))


def xclient_command(client, offered):
    """
    The C{XCLIENT} command telling the upstream who the real client is
    (Postfix's XCLIENT extension): each of C{client}'s attributes
    (C{ADDR}, C{PORT}, C{HELO}, C{LOGIN}, C{PROTO}, C{NAME}) that the
    upstream announced in C{offered}, xtext-encoded, in a fixed order.
    """
    words = [f"{name}={xtext(client[name])}" for name in _XCLIENT_ORDER
             if name in offered and client.get(name) is not None]
    return "XCLIENT " + " ".join(words)


_XCLIENT_ORDER = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN")


def value(parameters, keyword):
    """The value of C{keyword} among C{parameters}, or C{None}."""
    return next((p.value for p in parameters if p.keyword == keyword), None)


def present(parameters, keyword):
    """Whether C{keyword} is among C{parameters}."""
    return any(p.keyword == keyword for p in parameters)


def for_upstream(parameters, offered, keep_auth=False):
    """
    The parameters an upstream that offers C{offered} (a set of upper-case
    EHLO keywords) may be sent, as one string with a leading space each,
    and the keywords left out.

    C{SIZE} needs C{SIZE}, C{BODY} needs C{8BITMIME} (an unmarked 8-bit
    message is taken by most servers, an unknown parameter by none), DSN's
    need C{DSN}, C{SMTPUTF8} needs C{SMTPUTF8}; C{AUTH} goes only where
    C{keep_auth} says the proxy logged in to the upstream, which then
    trusts it to vouch for the sender (RFC 4954 section 5).
    """
    kept, dropped = [], []
    for parameter in parameters:
        if parameter.keyword == "AUTH":
            allowed = keep_auth and "AUTH" in offered
        else:
            allowed = _NEEDS[parameter.keyword] in offered
        (kept if allowed else dropped).append(parameter)
    return "".join(" " + p.text for p in kept), tuple(p.keyword for p in dropped)
