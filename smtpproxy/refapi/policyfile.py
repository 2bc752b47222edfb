# -*- test-case-name: tests.test_refapi -*-
"""
The policy file (TOML), read once at start and on each reload into frozen
values, so that every mistake in it is found before it can answer a request
and the answering code never meets a malformed setting::

    [defaults]                       # optional; a user's own key replaces it
    recipient_domains = ["*"]        # "*": any domain
    rate = "100/hour"                # N/second|minute|hour|day, or "unlimited"
    remove_headers = ["X-Originating-IP"]

    [users.alice]
    password = "scrypt$32768$8$1$...$..."   # python -m smtpproxy.refapi hash
    senders = ["alice@example.com", "@example.org", "<>"]
    add_headers = { X-Account = "alice" }

Unknown keys are errors: a misspelt C{recipient_domain} must not silently
mean "the default".
"""

import json
import re
import tomllib
from types import MappingProxyType

from attrs import frozen

from smtpproxy.answer import parse_answer
from smtpproxy.commands import valid_mailbox
from smtpproxy.refapi.passwords import MalformedHash, PasswordHash

ANY_DOMAIN = "*"
NULL_SENDER = "<>"

_SETTINGS = {"recipient_domains", "rate", "add_headers", "remove_headers"}
_USER_KEYS = _SETTINGS | {"password", "senders"}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour|day)\s*")
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class PolicyFileError(Exception):
    """The file cannot be used; the message says where and what is wrong."""


@frozen
class Rate:
    """At most C{count} messages per C{period} seconds; C{text} as written."""

    count: int
    period: int
    text: str

    @classmethod
    def parse(cls, text: str) -> "Rate":
        match = _RATE.fullmatch(text)
        if match is None or int(match[1]) < 1:
            raise ValueError(f'rate must be "N/second|minute|hour|day" with N >= 1, not {text!r}')
        return cls(int(match[1]), _SECONDS[match[2]], f"{int(match[1])}/{match[2]}")


@frozen
class Account:
    """
    One user's settings, normalised for comparison: addresses with a
    lower-case domain, C{"@domain"} entries lower-case, C{""} for the null
    sender; recipient domains lower-case.

    @ivar headers: C{(name, value)} pairs for the answer, removals
        (C{value} None) first.
    @ivar rate: None when unlimited.
    """

    name: str
    password: PasswordHash
    senders: frozenset[str]
    recipient_domains: frozenset[str]
    headers: tuple[tuple[str, str | None], ...]
    rate: Rate | None


@frozen
class PolicyFile:
    """The loaded file: accounts by user name (read-only)."""

    users: MappingProxyType


def normal_address(address: str) -> str:
    """C{address} with its domain lower-cased: domains are case-insensitive, local parts not."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def load(path: str) -> PolicyFile:
    """Read and check the file at C{path}; L{PolicyFileError} on any defect."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise PolicyFileError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyFileError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse(document)
    except PolicyFileError as e:
        raise PolicyFileError(f"{path}: {e}") from None


def parse(document: dict) -> PolicyFile:
    """The L{PolicyFile} of a parsed TOML document; L{PolicyFileError} on any defect."""
    _only(document, {"defaults", "users"}, "the top level")
    defaults = _typed(document, "defaults", dict, "the top level", {})
    _only(defaults, _SETTINGS, "[defaults]")
    users = _typed(document, "users", dict, "the top level", {})
    if not users:
        raise PolicyFileError("no user: add a [users.NAME] table")
    accounts = {}
    for name, table in users.items():
        where = f"[users.{name}]"
        if not isinstance(table, dict):
            raise PolicyFileError(f"{where} must be a table")
        _only(table, _USER_KEYS, where)
        accounts[name] = _account(name, {**defaults, **table}, where)
    return PolicyFile(MappingProxyType(accounts))


def _account(name, settings, where):
    try:
        password = PasswordHash.parse(_typed(settings, "password", str, where))
    except MalformedHash as e:
        raise PolicyFileError(f"{where} password: {e}") from None
    if "recipient_domains" not in settings:
        raise PolicyFileError(
            f'{where}: no recipient_domains, here or in [defaults] ("*" allows any)'
        )
    rate = _typed(settings, "rate", str, where, "unlimited")
    try:
        rate = None if rate == "unlimited" else Rate.parse(rate)
    except ValueError as e:
        raise PolicyFileError(f"{where} {e}") from None
    return Account(
        name=name,
        password=password,
        senders=frozenset(_sender(entry, where) for entry in _strings(settings, "senders", where)),
        recipient_domains=frozenset(
            _domain(entry, where) for entry in _strings(settings, "recipient_domains", where)
        ),
        headers=_headers(settings, where),
        rate=rate,
    )


def _sender(entry, where):
    """
    An address, C{@domain} or C{<>}, normalised; the domain checked as the
    proxy would, UTF-8 included (SMTPUTF8 senders).
    """
    if entry == NULL_SENDER:
        return ""
    if entry.startswith("@") and valid_mailbox("postmaster" + entry, utf8=True):
        return entry.lower()
    if valid_mailbox(entry, utf8=True):
        return normal_address(entry)
    raise PolicyFileError(f'{where} senders: {entry!r} is not an address, "@domain" or "<>"')


def _domain(entry, where):
    if entry == ANY_DOMAIN or valid_mailbox("postmaster@" + entry, utf8=True):
        return entry.lower()
    raise PolicyFileError(f'{where} recipient_domains: {entry!r} is not a domain or "*"')


def _headers(settings, where):
    """
    The answer's header entries, each checked by the proxy's own answer
    validator: a header the proxy would refuse (and answer 451 for every
    message) stops the file from loading instead.
    """
    added = _typed(settings, "add_headers", dict, where, {})
    if not all(isinstance(value, str) for value in added.values()):
        raise PolicyFileError(f"{where} add_headers: values must be strings")
    removed = _strings(settings, "remove_headers", where, [])
    entries = [(name, None) for name in removed] + list(added.items())
    for name, value in entries:
        answer = {"allow": True, "headers": [{"name": name, "value": value}]}
        decision = parse_answer(200, json.dumps(answer).encode())
        if not decision.allowed:
            raise PolicyFileError(f"{where} header {name!r}: {decision.cause}")
    return tuple(entries)


def _only(table, known, where):
    unknown = sorted(set(table) - known)
    if unknown:
        raise PolicyFileError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


_REQUIRED = object()
_KINDS = {dict: "a table", list: "a list", str: "a string"}


def _typed(table, key, kind, where, default=_REQUIRED):
    value = table.get(key, default)
    if value is _REQUIRED:
        raise PolicyFileError(f"{where}: missing {key}")
    if not isinstance(value, kind):
        raise PolicyFileError(f"{where} {key}: must be {_KINDS[kind]}")
    return value


def _strings(table, key, where, default=_REQUIRED):
    values = _typed(table, key, list, where, default)
    if not all(isinstance(value, str) for value in values):
        raise PolicyFileError(f"{where} {key}: must be a list of strings")
    return values
