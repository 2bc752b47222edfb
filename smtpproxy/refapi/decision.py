# -*- test-case-name: tests.test_refapi -*-
"""
Pure: the reference API's answer (docs/protocol.rst section 4) to one
request (docs/protocol.rst section 3), given the account whose password matched; and its answer to a
login check (C{--auth_api}).

The two calls are told apart by their shape, so that one URL may serve
both: a body with a C{"mechanism"} key is a login check (the message
request has none), anything else must be a message request.

The checks run in a fixed order (login, sender, recipients, rate) and the
first that fails is the reason, naming what failed, so a user can fix it.
The rate comes last so that only messages that would be allowed use it up.
"""

import json

from attrs import field, frozen

from smtpproxy.refapi.policyfile import ANY_DOMAIN, NULL_SENDER, Account, normal_address

LOGIN_FAILED = "unknown user or wrong password"


class BadRequest(ValueError):
    """Not a docs/protocol.rst section 3 request; answered with HTTP 400 and this message."""


@frozen
class Request:
    """The fields of a request the reference API judges; the rest it ignores."""

    username: str
    password: str = field(repr=False)
    sender: str
    recipients: tuple[str, ...]


@frozen
class LoginRequest:
    """A login check: only the credentials count."""

    username: str
    password: str = field(repr=False)


def parse_request(body: bytes) -> Request | LoginRequest:
    """
    The L{Request} or L{LoginRequest} in a POST body, or L{BadRequest}
    saying what is missing.
    """
    try:
        asked = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(asked, dict):
        raise BadRequest("body is not a JSON object")
    login = "mechanism" in asked
    keys = (("username", str, "a string"), ("password", str, "a string"))
    if not login:
        keys += (("from", str, "a string"), ("to", list, "a list"))
    for key, kind, name in keys:
        if not isinstance(asked.get(key), kind):
            raise BadRequest(f"{key!r} is missing or not {name}")
    if login:
        return LoginRequest(asked["username"], asked["password"])
    if not all(isinstance(recipient, str) for recipient in asked["to"]):
        raise BadRequest("'to' must be a list of strings")
    return Request(asked["username"], asked["password"], asked["from"], tuple(asked["to"]))


class RateLimiter:
    """
    A token bucket per user: C{rate.count} messages at once, refilled evenly
    over C{rate.period}.  Unlike a fixed window it never lets twice the rate
    through around a window's edge, and unlike a sliding log it keeps two
    numbers per user whatever the rate.  Only accounts that passed the
    password check get a bucket, so memory is bounded by the users in the
    file; L{retain} forgets those a reloaded file no longer has.
    """

    def __init__(self):
        self._buckets = {}

    def take(self, name: str, rate, now: float) -> bool:
        """Use up one message of C{name}'s C{rate} at time C{now}, if one is left."""
        tokens, then = self._buckets.get(name, (rate.count, now))
        tokens = min(rate.count, tokens + max(0.0, now - then) * rate.count / rate.period)
        allowed = tokens >= 1
        self._buckets[name] = (tokens - allowed, now)
        return allowed

    def retain(self, names) -> None:
        """Forget every user not in C{names}."""
        self._buckets = {name: b for name, b in self._buckets.items() if name in names}


def decide(account: Account | None, request: Request | LoginRequest, limiter: RateLimiter,
           now: float) -> dict:
    """
    The answer for C{request}; C{account} is None when the login failed
    (unknown user and wrong password alike, so names cannot be probed).
    A login check is allowed on the password alone: the rest is the
    message's business.
    """
    if account is None:
        return _deny(LOGIN_FAILED)
    if isinstance(request, LoginRequest):
        return {"allow": True}
    if not _sender_allowed(account, request.sender):
        return _deny(f"sender {request.sender or NULL_SENDER} not allowed for {account.name}")
    refused = _refused_domains(account, request.recipients)
    if refused:
        return _deny("recipient domain not allowed: " + ", ".join(refused))
    if account.rate is not None and not limiter.take(account.name, account.rate, now):
        return _deny(f"message rate {account.rate.text} reached, try again later", temporary=True)
    return {"allow": True, "headers": [{"name": n, "value": v} for n, v in account.headers]}


def _sender_allowed(account, sender):
    address = normal_address(sender)
    _, at, domain = address.rpartition("@")
    return address in account.senders or bool(at) and at + domain in account.senders


def _refused_domains(account, recipients):
    """Each recipient domain C{account} may not send to, once, in order."""
    if ANY_DOMAIN in account.recipient_domains:
        return []
    domains = (recipient.rpartition("@")[2].lower() for recipient in recipients)
    return list(dict.fromkeys(d for d in domains if d not in account.recipient_domains))


def _deny(reason, temporary=False):
    answer = {"allow": False, "reason": reason}
    if temporary:
        answer["temporary"] = True
    return answer
