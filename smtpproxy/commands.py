# -*- test-case-name: tests.test_commands -*-
"""
Pure: parsing of SMTP command lines and of the MAIL and RCPT arguments.

The addresses parsed here are relayed to the upstream server inside its own
MAIL and RCPT commands, so the address grammar (RFC 5321 section 4.1.2) is
applied strictly: an address that passes can carry no CR, LF, NUL, other
control character, C{<} or C{>} that could end the upstream command early
or smuggle a second one.  One grammar serves MAIL, RCPT and
L{valid_mailbox}, which checks the sender address the policy API returns.
"""

import re
from ipaddress import IPv4Address, IPv6Address

from attrs import frozen

from smtpproxy import replies
from smtpproxy.parameters import (
    Offer,
    Parameter,
    ParameterError,
    parse_mail_parameters,
    parse_rcpt_parameters,
    present,
    unxtext,
    value,
)

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
# RFC 6531: with SMTPUTF8, atext, qtext and labels also take non-ASCII
# characters; still no C1 control and no white space of any script.
_UTF8 = r"[^\x00-\x9f\xa0\u1680\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ufeff]"
# qtextSMTP and quoted-pairSMTP (RFC 5321 section 4.1.2): printable ASCII
# and space; never a control character, CR or LF.
_QTEXT = r"[ !#-\[\]-~]"
_QPAIR = r"\\[ -~]"
_LABEL_CHAR = "[A-Za-z0-9]"
_MAX_DOMAIN = 255  # RFC 5321 section 4.5.3.1.2
_IPV4_CHARACTERS = re.compile(r"[0-9.]+")
# Hex digits, colons and an embedded IPv4 part; no "%" scope id, which
# ipaddress would accept but RFC 5321 does not.
_IPV6_CHARACTERS = re.compile(r"[0-9A-Fa-f:.]+")


def _grammar(utf8):
    """The Mailbox and Domain patterns, ASCII or (RFC 6531) UTF-8."""
    extra = f"|{_UTF8}" if utf8 else ""
    atext = f"(?:{_ATEXT}{extra})"
    quoted = f'"(?:{_QTEXT}|{_QPAIR}{extra})*"'
    local_part = rf"(?:{atext}+(?:\.{atext}+)*|{quoted})"  # Dot-string / Quoted-string
    alnum = f"(?:{_LABEL_CHAR}{extra})"
    label = rf"{alnum}(?:(?:{alnum}|-){{0,61}}{alnum})?"
    return (re.compile(rf"{local_part}@(?P<domain>.+)", re.DOTALL),
            re.compile(rf"{label}(?:\.{label})*"))


_GRAMMARS = {False: _grammar(False), True: _grammar(True)}


def _argument_pattern(keyword):
    """C{FROM:} or C{TO:} (any case), optional spaces, then the path's C{<}."""
    return re.compile(rf"(?i:{keyword}):[ ]*<")


_MAIL_ARGUMENT = _argument_pattern("FROM")
_RCPT_ARGUMENT = _argument_pattern("TO")


class CommandError(replies.Refusal):
    """A command line the session must refuse with C{reply}."""


@frozen
class Command:
    """One command line: its verb, upper-cased, and its argument bytes."""

    verb: str
    argument: bytes


@frozen
class MailFrom:
    """
    A parsed MAIL argument.

    @ivar address: the reverse-path without brackets, C{""} for C{<>}.
    @ivar parameters: the L{Parameter}s, in the client's order.
    """

    address: str
    parameters: tuple[Parameter, ...] = ()

    @property
    def size(self):
        """The declared C{SIZE=}, or C{None}; the session compares it with its limit."""
        size = value(self.parameters, "SIZE")
        return None if size is None else int(size)

    @property
    def body(self):
        """C{"7BIT"} or C{"8BITMIME"} from C{BODY=}, or C{None}."""
        body = value(self.parameters, "BODY")
        return None if body is None else body.upper()

    @property
    def smtputf8(self):
        """Whether the transaction uses SMTPUTF8 (RFC 6531): UTF-8 addresses allowed."""
        return present(self.parameters, "SMTPUTF8")


@frozen
class RcptTo:
    """A parsed RCPT argument: the address without brackets, and the L{Parameter}s."""

    address: str
    parameters: tuple[Parameter, ...] = ()


def parse_command(line: bytes) -> Command:
    """
    Split a command line into verb and argument.

    A verb that is not plain ASCII letters becomes C{""}, which the session
    answers as an unknown command, so no odd byte reaches a command table
    or a log field as a verb.
    """
    verb, _, argument = line.partition(b" ")
    verb = verb.decode("ascii").upper() if verb.isalpha() else ""
    return Command(verb, argument.strip(b" \t"))


def parse_mail(argument: bytes, offer: Offer = Offer()) -> MailFrom:
    """
    Parse C{FROM:<reverse-path> [parameters]}; see L{smtpproxy.parameters}
    for the parameters C{offer} allows.

    @raise CommandError: 501 5.5.4 for bad syntax or a bad parameter value,
        501 5.1.3 for a bad address, 553 5.6.7 for a non-ASCII address
        without SMTPUTF8, 555 5.5.4 for a parameter not offered.
    """
    path, text = _split_argument(_MAIL_ARGUMENT, argument, replies.MAIL_SYNTAX)
    utf8 = offer.smtputf8 and "SMTPUTF8" in text.upper().split(" ")
    address = "" if path == "" else _path_address(path, utf8)
    parameters = _parameters(parse_mail_parameters, text, offer)
    auth = value(parameters, "AUTH")
    if auth not in (None, "<>") and not _is_mailbox(unxtext(auth)):
        raise CommandError(replies.BAD_PARAMETER)  # RFC 4954 section 5: <> or a mailbox
    return MailFrom(address, parameters)


def parse_rcpt(argument: bytes, offer: Offer = Offer(), utf8: bool = False) -> RcptTo:
    """
    Parse C{TO:<forward-path> [parameters]}.

    C{<>} is no recipient; C{<postmaster>} without a domain is one
    (RFC 5321 section 4.1.1.3).

    @param utf8: the transaction's MAIL had SMTPUTF8.
    @raise CommandError: as L{parse_mail}.
    """
    path, text = _split_argument(_RCPT_ARGUMENT, argument, replies.RCPT_SYNTAX)
    address = path if path.lower() == "postmaster" else _path_address(path, utf8)
    return RcptTo(address, _parameters(parse_rcpt_parameters, text, offer))


def _parameters(parse, text, offer):
    try:
        return parse(text, offer)
    except ParameterError as e:
        raise CommandError(e.reply) from None


def valid_mailbox(address: str, utf8: bool = False) -> bool:
    """
    Whether C{address} (no brackets, no source route) is a mailbox that can
    be put into an upstream MAIL or RCPT command as it is; with C{utf8}, a
    mailbox of RFC 6531 (SMTPUTF8).
    """
    return _is_mailbox(address, utf8)


def _split_argument(pattern, argument, syntax_error):
    """
    The path and the parameter text of a MAIL or RCPT argument.

    Latin-1 maps every byte to one character, so non-ASCII bytes survive
    decoding and are refused by the grammar rather than by a decode error.
    """
    text = argument.decode("latin-1")
    match = pattern.match(text)
    split = None if match is None else (
        _split_path(text[match.end():], quotes=True) or _split_path(text[match.end():]))
    if split is None:
        raise CommandError(syntax_error)
    return split


def _split_path(text, quotes=False):
    """
    C{(path, parameters)} of what follows a path's C{<}, or C{None}.  The
    path ends at the first C{>} followed by a space or the end; with
    C{quotes}, not at one inside a quoted string (C{"a> b"@example.com}).
    Without, a C{>} inside an address stays in the path, where the address
    check refuses it.
    """
    quoted = escaped = False
    for i, character in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif quotes and character == '"':
            quoted = not quoted
        elif not quoted and character == ">" and text[i + 1:i + 2] in ("", " "):
            return text[:i], text[i + 1:].strip(" ")
    return None


def _path_address(path, utf8):
    """
    The mailbox of a path, without the source route that RFC 5321 section
    4.1.2 says to accept and ignore.  The path arrives as Latin-1 (one
    character per byte); non-ASCII bytes must be UTF-8, and are allowed
    only with SMTPUTF8 (RFC 6531 section 3.3).
    """
    if not path.isascii():
        if not utf8:
            raise CommandError(replies.NEEDS_SMTPUTF8)
        try:
            path = path.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(replies.BAD_ADDRESS) from None
    if path.startswith("@"):
        route, _, path = path.partition(":")
        if not all(hop.startswith("@") and _is_domain(hop[1:], utf8) for hop in route.split(",")):
            raise CommandError(replies.BAD_ADDRESS)
    if not _is_mailbox(path, utf8):
        raise CommandError(replies.BAD_ADDRESS)
    return path


def _is_mailbox(address, utf8=False):
    """RFC 5321 Mailbox: Local-part "@" ( Domain / address-literal )."""
    match = _GRAMMARS[utf8][0].fullmatch(address)
    if match is None:
        return False
    domain = match["domain"]
    if domain.startswith("[") and domain.endswith("]"):
        return _is_address_literal(domain[1:-1])
    return _is_domain(domain, utf8)


def _is_domain(domain, utf8=False):
    """Dot-separated labels of letters, digits and inner hyphens."""
    return len(domain) <= _MAX_DOMAIN and _GRAMMARS[utf8][1].fullmatch(domain) is not None


def _is_address_literal(literal):
    """The inside of C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}."""
    tag, colon, address = literal.partition(":")
    if not colon:
        return _is_ip(IPv4Address, _IPV4_CHARACTERS, literal)
    return tag.lower() == "ipv6" and _is_ip(IPv6Address, _IPV6_CHARACTERS, address)


def _is_ip(kind, characters, text):
    """
    Whether C{text} is an address of C{kind}; C{characters} first narrows
    it to what RFC 5321 allows, as C{ipaddress} is more lenient.
    """
    if characters.fullmatch(text) is None:
        return False
    try:
        kind(text)
    except ValueError:
        return False
    return True
