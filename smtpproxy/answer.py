# -*- test-case-name: tests.test_answer -*-
"""
Pure: the policy API's request object (docs/protocol.rst section 3) and the validation of
its answer (docs/protocol.rst section 4).

The API is trusted to decide, not to be well-formed.  Whatever in its answer
is not exactly what docs/protocol.rst section 4 allows makes the proxy answer 451 4.3.0,
so a buggy API can delay mail but can never put bytes into the relayed
header block or the SMTP dialogue, nor dress a refusal up as a success.

Two choices the protocol (docs/protocol.rst) leaves open are made here, both in the safe direction:

  - Every known key is checked whatever C{allow} says: a malformed
    C{headers} in a refusal is as much a broken API as in an allow.
  - C{"from": ""} means the null sender C{<>} (a client may send that too),
    while C{"from": null} is refused: it could mean "keep" or "null sender".
"""

import json
import re
from collections.abc import Sequence

from attrs import frozen

from smtpproxy.commands import valid_mailbox
from smtpproxy.replies import POLICY_UNAVAILABLE, Reply, sanitise

DEFAULT_REASON = "Message refused by policy"

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_LINE_BREAKING = re.compile(r"[\r\n\x00]")
_MISSING = object()


def build_request(
    login,
    sender: str,
    recipients: Sequence[str],
    headers: list[dict],
    client_address: str,
    helo: str,
    mail_parameters: Sequence = (),
    rcpt_parameters: Sequence = (),
) -> dict:
    """
    The JSON object of docs/protocol.rst section 3.

    @param login: the client's L{smtpproxy.auth.Login}.
    @param sender: the MAIL FROM address without brackets, C{""} for C{<>}.
    @param headers: the header fields as C{{"name": ..., "value": ...}}
        dicts, already unfolded and decoded.
    @param mail_parameters: MAIL's L{smtpproxy.parameters.Parameter}s.
    @param rcpt_parameters: each recipient's RCPT parameters, in order.

    The parameters appear as the original proxy's newer version shows
    them, so an API written for it works unchanged: C{mailParameters} is
    every MAIL parameter as sent (keyword upper-cased, C{null} for one
    without a value), C{rcptParameters} one entry per recipient.
    """
    return {
        "username": login.username,
        "password": login.password,
        "from": sender,
        "to": list(recipients),
        "headers": headers,
        "client_address": client_address,
        "helo": helo,
        "mailParameters": [p.for_api() for p in mail_parameters],
        "rcptParameters": [
            {"address": address, "parameters": [p.for_api() for p in parameters]}
            for address, parameters in zip(
                recipients, rcpt_parameters or [()] * len(recipients), strict=True)
        ],
    }


@frozen
class Decision:
    """
    What the API decided, in the terms the proxy acts on.

    @ivar reply: C{None} when the message may go upstream; otherwise the
        final reply for the client (a refusal, or 451 when the API failed).
    @ivar headers: the header changes, C{(name, value)} in the API's order;
        a value of C{None} only removes.
    @ivar sender: the replacement envelope sender, C{""} for C{<>}; C{None}
        keeps the client's.
    @ivar cause: why the API counts as unavailable, for the log only.
    @ivar auth_id: the API's C{authId}, its own reference for this
        message, for the log line; C{None} when it gave none.
    """

    reply: Reply | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    sender: str | None = None
    cause: str | None = None
    auth_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.reply is None

    @classmethod
    def unavailable(cls, cause: str) -> "Decision":
        """The 451 4.3.0 decision for an API that did not answer usably."""
        return cls(reply=POLICY_UNAVAILABLE, cause=cause)


class Malformed(Exception):
    """An API answer breaks its contract; the message says where, for the log."""


def parse_answer(status: int, body: bytes) -> Decision:
    """
    Turn the API's HTTP status and body into a L{Decision}.  Never raises:
    every defect becomes L{Decision.unavailable}.
    """
    try:
        return _decide(status, body)
    except Malformed as e:
        return Decision.unavailable(str(e))


def json_object(status: int, body: bytes) -> dict:
    """
    The JSON object a 2xx answer carries; L{Malformed} for any other
    status or body.  Both API calls (message and login) start here.
    """
    if not 200 <= status < 300:
        raise Malformed(f"HTTP status {status}")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"answer is not JSON ({e})") from None
    if not isinstance(answer, dict):
        raise Malformed("answer is not a JSON object")
    return answer


def _decide(status, body):
    answer = json_object(status, body)
    allow = field(answer, "allow", bool)
    reason = field(answer, "reason", str, "")
    temporary = field(answer, "temporary", bool, False)
    entries = field(answer, "headers", list, [])
    headers = tuple(_header(i, entry) for i, entry in enumerate(entries))
    sender = _sender(answer)
    auth_id = field(answer, "authId", str) if "authId" in answer else None
    if allow:
        return Decision(headers=headers, sender=sender, auth_id=auth_id)
    return Decision(reply=_refusal(reason, temporary), auth_id=auth_id)


def field(obj, key, kind, default=_MISSING):
    """
    C{obj[key]}, or C{default} when absent; anything but a C{kind} (JSON
    null too) is malformed.
    """
    value = obj.get(key, default)
    if not isinstance(value, kind):
        raise Malformed(f"{key!r} must be a {kind.__name__}")
    return value


def _header(index, entry):
    """
    One C{headers} entry as C{(name, value)}: a name that cannot end the
    field early, a value that cannot start another one.
    """
    where = f"headers[{index}]"
    if not isinstance(entry, dict):
        raise Malformed(f"{where} must be an object")
    name = entry.get("name")
    if not (isinstance(name, str) and _FIELD_NAME.fullmatch(name)):
        raise Malformed(f"{where}: 'name' must be a field name (ASCII 33-126, no colon)")
    value = entry.get("value", _MISSING)
    if value is not None and not (isinstance(value, str) and not _LINE_BREAKING.search(value)):
        raise Malformed(f"{where}: 'value' must be null or a string without CR, LF or NUL")
    return name, value


def _sender(answer):
    if "from" not in answer:
        return None
    sender = field(answer, "from", str)
    if sender and not valid_mailbox(sender):
        raise Malformed("'from' must be an address")
    return sender


def _refusal(reason, temporary):
    """
    The refusal reply.  The enhanced code is always ours: a reason that
    starts with one of its own (even C{2.0.0}) is only text after it.
    """
    text = sanitise(reason) or DEFAULT_REASON
    return Reply(450, f"4.7.1 {text}") if temporary else Reply(550, f"5.7.1 {text}")
