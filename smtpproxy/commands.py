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

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
# qtextSMTP and quoted-pairSMTP without space, "<" and ">": RFC 5321 allows
# them in quotes, but SPEC section 1 refuses spaces in addresses, and an
# upstream that finds the path's end by the first ">" would read the rest of
# the address as parameters.
_QUOTED = r'"(?:[!#-;=?-\[\]-~]|\\[!-;=?-~])*"'
_LOCAL_PART = rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|{_QUOTED})"  # Dot-string / Quoted-string
_MAILBOX = re.compile(rf"{_LOCAL_PART}@(?P<domain>.+)", re.DOTALL)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_DOMAIN = 255  # RFC 5321 section 4.5.3.1.2
_IPV4_CHARACTERS = re.compile(r"[0-9.]+")
# Hex digits, colons and an embedded IPv4 part; no "%" scope id, which
# ipaddress would accept but RFC 5321 does not.
_IPV6_CHARACTERS = re.compile(r"[0-9A-Fa-f:.]+")

_PARAMETER = re.compile(r"(?P<keyword>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[!-<>-~]+))?")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")  # RFC 1870: size-value ::= 1*20DIGIT
_BODY_VALUES = frozenset({"7BIT", "8BITMIME"})  # RFC 6152; BINARYMIME is not offered


def _argument_pattern(keyword):
    """
    C{FROM:} or C{TO:} (any case), optional spaces, a path in angle brackets,
    then optional space-separated parameters.  The path is the shortest one
    that ends in a C{>} followed by a space or the end, so a C{>} inside an
    address stays in the path, where the address check refuses it.
    """
    return re.compile(rf"(?i:{keyword}):[ ]*<(?P<path>.*?)>(?:[ ]+(?P<parameters>.*))?", re.DOTALL)


_MAIL_ARGUMENT = _argument_pattern("FROM")
_RCPT_ARGUMENT = _argument_pattern("TO")


class CommandError(replies.Refusal):
    """A command line the session must refuse with L{reply}."""


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
    @ivar size: the declared C{SIZE=}, or C{None}; the session compares it
        with its limit.
    @ivar body: C{"7BIT"} or C{"8BITMIME"} from C{BODY=}, or C{None}.
    """

    address: str
    size: int | None = None
    body: str | None = None


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


def parse_mail(argument: bytes) -> MailFrom:
    """
    Parse C{FROM:<reverse-path> [SIZE=n] [BODY=7BIT|8BITMIME]}.

    @raise CommandError: 501 5.5.4 for bad syntax or a bad parameter value,
        501 5.1.3 for a bad address, 555 5.5.4 for any other parameter
        (SMTPUTF8 included: it is not offered, so addresses are ASCII).
    """
    path, parameters = _split_argument(_MAIL_ARGUMENT, argument, replies.MAIL_SYNTAX)
    address = "" if path == "" else _path_address(path)
    size, body = _mail_parameters(parameters)
    return MailFrom(address, size, body)


def parse_rcpt(argument: bytes) -> str:
    """
    Parse C{TO:<forward-path>} and return the address without brackets.

    C{<>} is no recipient; C{<postmaster>} without a domain is one
    (RFC 5321 section 4.1.1.3).  No RCPT parameter is offered.

    @raise CommandError: as L{parse_mail}.
    """
    path, parameters = _split_argument(_RCPT_ARGUMENT, argument, replies.RCPT_SYNTAX)
    address = path if path.lower() == "postmaster" else _path_address(path)
    if parameters:
        raise CommandError(replies.UNKNOWN_PARAMETER)
    return address


def valid_mailbox(address: str) -> bool:
    """
    Whether C{address} (no brackets, no source route) is a mailbox that can
    be put into an upstream MAIL or RCPT command as it is.
    """
    return _is_mailbox(address)


def _split_argument(pattern, argument, syntax_error):
    """
    The path and the parameter text of a MAIL or RCPT argument.

    Latin-1 maps every byte to one character, so non-ASCII bytes survive
    decoding and are refused by the grammar rather than by a decode error.
    """
    match = pattern.fullmatch(argument.decode("latin-1"))
    if match is None:
        raise CommandError(syntax_error)
    return match["path"], (match["parameters"] or "").strip(" ")


def _path_address(path):
    """
    The mailbox of a path, without the source route that RFC 5321 section
    4.1.2 says to accept and ignore.
    """
    if path.startswith("@"):
        route, _, path = path.partition(":")
        if not all(hop.startswith("@") and _is_domain(hop[1:]) for hop in route.split(",")):
            raise CommandError(replies.BAD_ADDRESS)
    if not _is_mailbox(path):
        raise CommandError(replies.BAD_ADDRESS)
    return path


def _is_mailbox(address):
    """RFC 5321 Mailbox: Local-part "@" ( Domain / address-literal )."""
    match = _MAILBOX.fullmatch(address)
    if match is None:
        return False
    domain = match["domain"]
    if domain.startswith("[") and domain.endswith("]"):
        return _is_address_literal(domain[1:-1])
    return _is_domain(domain)


def _is_domain(domain):
    """Dot-separated labels of letters, digits and inner hyphens."""
    return len(domain) <= _MAX_DOMAIN and _DOMAIN.fullmatch(domain) is not None


def _is_address_literal(literal):
    """The inside of C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}."""
    tag, colon, address = literal.partition(":")
    if not colon:
        return _is_ip(IPv4Address, _IPV4_CHARACTERS, literal)
    return tag.lower() == "ipv6" and _is_ip(IPv6Address, _IPV6_CHARACTERS, address)


def _is_ip(kind, characters, text):
    """
    Whether C{text} is an address of C{kind}; C{characters} first narrows
    it to what RFC 5321 allows, as L{ipaddress} is more lenient.
    """
    if characters.fullmatch(text) is None:
        return False
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _mail_parameters(text):
    """
    The SIZE and BODY values of MAIL's parameters (RFC 1870, RFC 6152).

    Each keyword may appear once: a repeated one is malformed.
    """
    values = {}
    for parameter in filter(None, text.split(" ")):
        match = _PARAMETER.fullmatch(parameter)
        if match is None:
            raise CommandError(replies.BAD_PARAMETER)
        keyword, value = match["keyword"].upper(), match["value"]
        if keyword not in ("SIZE", "BODY"):
            raise CommandError(replies.UNKNOWN_PARAMETER)
        if keyword in values or value is None:
            raise CommandError(replies.BAD_PARAMETER)
        values[keyword] = value
    return _size(values.get("SIZE")), _body(values.get("BODY"))


def _size(value):
    """The declared size; digits only, as C{int()} would also take C{+1} or C{1_0}."""
    if value is None:
        return None
    if _SIZE_VALUE.fullmatch(value) is None:
        raise CommandError(replies.BAD_PARAMETER)
    return int(value)


def _body(value):
    """The declared body type, upper-cased for the caller's comparisons."""
    if value is None:
        return None
    if value.upper() not in _BODY_VALUES:
        raise CommandError(replies.BAD_PARAMETER)
    return value.upper()
