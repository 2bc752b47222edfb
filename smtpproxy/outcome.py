# -*- test-case-name: tests.test_operations -*-
"""
What became of a message, in the words its log line and its metric share.

Both the policy API's verdict (the log line's C{policy=}) and the
message's outcome (the first word of the line, the label of
C{smtpproxy_messages_total}) are named here and nowhere else, so the log
and the metrics cannot come to disagree about a message.  The line itself
is put together here too.  Pure: it sees only the decision, the reply and
the message's fields.
"""

from smtpproxy import replies

OUTCOMES = (
    "delivered", "denied", "temp_failed", "refused_upstream", "refused_limit", "invalid", "aborted",
)

ALLOW = "allow"
DENY = "deny"
UNAVAILABLE = "unavailable"


def verdict(decision):
    """
    The policy API's word on a message: C{allow}, C{deny} (its own 550 or
    450), or C{unavailable} (no usable answer, C{451 4.3.0}).

    @param decision: the L{smtpproxy.answer.Decision} the policy client gave.
    """
    if decision.allowed:
        return ALLOW
    if decision.reply == replies.POLICY_UNAVAILABLE:
        return UNAVAILABLE
    return DENY


def outcome(reply, policy=None):
    """
    The outcome for a message's final C{reply}.

    @param reply: the L{replies.Reply} the client got, or C{None} for a
        message that never got one: its client went away (or was cut off)
        before the final dot.
    @param policy: the API's L{verdict} on the message if it gave one by
        then: a refusal after a C{deny} counts as the API's, as opposed to
        a refusal from the upstream or a limit.
    """
    if reply is None:
        return "aborted"
    if reply.code == 250:
        return "delivered"
    if policy == DENY:
        return "denied"
    if reply in (replies.MESSAGE_TOO_BIG, replies.HEADER_TOO_BIG):
        return "refused_limit"
    if reply == replies.BARE_LINE_END:
        return "invalid"
    return "temp_failed" if reply.temporary else "refused_upstream"


def message_line(result, fields, api, auth_id, reply):
    """
    The one log line of a message that got its C{reply}.

    It is put together with an f-string and logged whole (the fields go
    along for structured observers): with a format string, Twisted would
    parse it again for every message, a few per cent of a small message's
    CPU.

    @param result: its L{outcome}.
    @param fields: C{conn}, C{client}, C{user}, C{sender}, C{count} (of
        recipients), C{size}, C{policy}, C{tls} and C{time} (in ms).
    @param api: how long the policy API took, as shown (C{"12ms"}, C{"-"}).
    @param auth_id: the API's C{authId} for the message, or C{None}.
    """
    f = fields
    shown_id = "" if auth_id is None else f"auth_id={auth_id!r} "
    return (
        f"message {result} conn={f['conn']} client={f['client']} user={f['user']!r} "
        f"from=<{f['sender']}> rcpts={f['count']} size={f['size']} policy={f['policy']} "
        f"api={api} tls={f['tls']} {shown_id}reply={reply.code} {reply.text} "
        f"time={f['time']:.0f}ms"
    )
