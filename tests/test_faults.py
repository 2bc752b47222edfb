"""
Fault injection (issue 3): no message is lost and none is duplicated, whatever the policy API
and the upstream do.

Hundreds of messages go through the real proxy (L{tests.support.stack}: loopback, real TLS)
from several concurrent clients, several messages per connection, while the API answers
each message at random with an allow, a refusal, a 5xx, garbage or nothing at all (past a
short API timeout), and the upstream refuses its recipient or its data, drops the connection
after the final dot, or stalls (past a short upstream timeout).  Every message has its own
recipient and Message-ID, so each fault hits exactly one message, and each outcome is
checked:

  - 250: the message is at the upstream exactly once, byte for byte, with the API's header;
  - 4xx/5xx: it is not at the upstream at all;
  - with one exception, SMTP's own duplicate window: an upstream that stores the message and
    drops the connection before its reply leaves the proxy no way to know, so the client gets
    451 and may send it again.  The proxy never resends it itself; such messages are counted
    apart and must match the drops injected, one for one.

The test prints the seed and the counts.  Environment:

  - C{SMTPPROXY_SEED=n} replays a run's fault plan and message contents;
  - C{SMTPPROXY_SOAK=n} sends n messages instead of 500, for a soak::

        SMTPPROXY_SOAK=5000 .venv/bin/python -m twisted.trial tests.test_faults
"""

import os
import random
import time
from collections import Counter, defaultdict

import attrs
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from smtpproxy import replies
from tests.support.client import submit
from tests.support.stack import Stack
from tests.support.upstream import END_OF_DATA, Script

MESSAGES = int(os.environ.get("SMTPPROXY_SOAK", "500"))
CLIENTS = 20
MAX_PER_CONNECTION = 8
TIMEOUT = 1.0
"""
The API and upstream timeouts: short, as hangs and stalls wait for them, yet far above what
a loopback answer takes, so only the injected faults time out.
"""

DELIVERED, DENIED, TEMPORARY = "delivered (250)", "denied (5xx)", "temp-failed (4xx)"
DUPLICATE = "duplicate window (451, yet stored upstream)"


def allow(message_id):
    """The API allows the message and adds a header naming it."""
    return {"allow": True, "headers": [{"name": "X-Fault-Id", "value": message_id}]}


def hang(message_id):
    """The API never answers (the proxy gives up at its timeout and hangs up)."""
    return defer.Deferred()


GARBAGE = [
    (200, b"<html>not JSON</html>"),
    (200, b'{"allow": "yes"}'),
    (200, b"[true]"),
    {"allow": True, "headers": [{"name": "X-Injected", "value": "a\r\nBcc: evil@example.com"}]},
    {"allow": True, "from": "evil@example.com>\r\nRCPT TO:<victim@example.net"},
]


@attrs.frozen
class Fault:
    """
    One kind of fault, and what the client must hear for it.

    @ivar answer: the API's answer for a message id (a dict, a (status, body) pair or a
        Deferred, as L{tests.support.api.FakeApi} takes them), or None to pick one of
        L{GARBAGE} at random.
    @ivar refusal: the upstream's reply to the message's RCPT, or None to accept it.
    @ivar script: the upstream's L{Script} for the message after its RCPT.
    @ivar closing: the upstream answers the message's MAIL FROM with 421 and hangs up, if
        the proxy sends it on a connection kept from an earlier message.
    @ivar reply: the client's reply to the final dot, code and text; a text ending in a
        space is a prefix (the queue id follows).
    """

    name: str
    answer: object = allow
    refusal: tuple = None
    script: Script = None
    closing: bool = False
    reply: tuple = (250, "2.0.0 Ok: queued as ")

    @property
    def outcome(self):
        if self.script is not None and self.script.drop_after_data:
            return DUPLICATE
        return {2: DELIVERED, 4: TEMPORARY, 5: DENIED}[self.reply[0] // 100]


UNAVAILABLE = (replies.UPSTREAM_UNAVAILABLE.code, replies.UPSTREAM_UNAVAILABLE.text)
POLICY_DOWN = (replies.POLICY_UNAVAILABLE.code, replies.POLICY_UNAVAILABLE.text)

FAULTS = [
    Fault("none"),
    Fault("api deny", lambda _: {"allow": False, "reason": "not yours"}, reply=(550, "5.7.1 not yours")),
    Fault("api temporary deny", lambda _: {"allow": False, "temporary": True, "reason": "slow down"},
          reply=(450, "4.7.1 slow down")),
    Fault("api 5xx", lambda _: (503, b"maintenance"), reply=POLICY_DOWN),
    Fault("api garbage", None, reply=POLICY_DOWN),
    Fault("api hang", hang, reply=POLICY_DOWN),
    Fault("upstream rcpt 4xx", refusal=(450, "4.2.1 Mailbox busy"), reply=(450, "4.2.1 Mailbox busy")),
    Fault("upstream rcpt 5xx", refusal=(550, "5.1.1 No such user"), reply=(550, "5.1.1 No such user")),
    Fault("upstream data 4xx", script=Script(data_reply=(452, "4.3.1 Insufficient storage")),
          reply=(452, "4.3.1 Insufficient storage")),
    Fault("upstream data 5xx", script=Script(data_reply=(554, "5.6.0 Content refused")),
          reply=(554, "5.6.0 Content refused")),
    Fault("upstream drop after dot", script=Script(drop_after_data=True), reply=UNAVAILABLE),
    Fault("upstream stall at DATA", script=Script(stall="DATA"), reply=UNAVAILABLE),
    Fault("upstream stall after dot", script=Script(stall=END_OF_DATA), reply=UNAVAILABLE),
    Fault("upstream hangs up once idle", script=Script(hang_up_after=True)),
    Fault("upstream 421 at a kept connection's MAIL", closing=True),
]
WEIGHTS = [6] + [1] * (len(FAULTS) - 1)  # a third of the messages meet no fault


@attrs.define
class Planned:
    """One message of the run: what it is, what it meets, and (later) what the client heard."""

    number: int
    fault: Fault
    api_answer: object
    content: bytes
    expected: bytes
    reply: object = None

    @property
    def recipient(self):
        return f"m{self.number:06d}@example.net"

    @property
    def sender(self):
        """Its own sender where the upstream must know the message at MAIL FROM."""
        return f"m{self.number:06d}@senders.test" if self.fault.closing else "alice@example.com"


def plan(rng, count):
    """The run's messages and their faults, and how they are grouped into connections."""
    messages = [_planned(rng, number) for number in range(count)]
    connections, start = [], 0
    while start < count:
        size = rng.randint(1, MAX_PER_CONNECTION)
        connections.append(messages[start:start + size])
        start += size
    return messages, connections


def _planned(rng, number):
    fault = rng.choices(FAULTS, WEIGHTS)[0]
    message_id = f"{number:06d}@faults.test"
    answer = rng.choice(GARBAGE) if fault.answer is None else fault.answer(message_id)
    head, body = _content(rng, message_id)
    added = b"X-Fault-Id: " + message_id.encode() + b"\r\n"
    return Planned(number, fault, answer, head + b"\r\n" + body, head + added + b"\r\n" + body)


def _content(rng, message_id):
    """
    A header block (without its empty line) and a body: lines of any length, leading dots,
    empty lines, and now and then a body past the proxy's in-memory spool threshold.
    """
    head = (b"From: alice@example.com\r\nTo: bob@example.net\r\n"
            b"Subject: fault test\r\n\tfolded\r\nMessage-ID: <" + message_id.encode() + b">\r\n")
    lines = []
    for _ in range(rng.randint(0, 30)):
        line = rng.choice([b"", b".", b"..", b"x", b".leading dot", b"-- ", b"From me"])
        lines.append(line + b"y" * rng.choice([0, 10, 77, 998, 3000]))
    if rng.random() < 0.05:
        lines.append(b"z" * 998 * 300)
    return head, b"".join(line + b"\r\n" for line in lines)


class FaultInjectionTests(TestCase):
    timeout = 600  # a soak may take minutes; the default run takes seconds

    def setUp(self):
        self.seed = int(os.environ.get("SMTPPROXY_SEED", random.randrange(2**32)))
        self.stack = Stack(reactor, self.mktemp(), api_timeout=TIMEOUT, upstream_timeout=TIMEOUT,
                           upstream_offers=("PIPELINING",))
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def test_nothing_lost_nothing_duplicated(self):
        print(f"\nfault injection: SMTPPROXY_SEED={self.seed}")
        messages, connections = plan(random.Random(self.seed), MESSAGES)
        by_recipient = {message.recipient: message for message in messages}
        for message in messages:
            if message.fault.refusal is not None:
                self.stack.upstream.rcpt_refusals[message.recipient] = message.fault.refusal
            if message.fault.script is not None:
                self.stack.upstream.scripts[message.recipient] = message.fault.script
            if message.fault.closing:
                self.stack.upstream.closing_senders.add(message.sender)
        self.stack.api.answer = lambda request: by_recipient[request["to"][0]].api_answer

        yield self.stack.ready()
        started, opened = time.monotonic(), len(connections)
        yield defer.gatherResults([self.client(connections) for _ in range(CLIENTS)])
        seconds = time.monotonic() - started

        counts = self.check(messages)
        self.report(messages, counts, opened, seconds)
        drops = sum(1 for m in messages if m.fault.outcome == DUPLICATE)
        self.assertEqual(counts[DUPLICATE], drops)
        self.assertEqual(sum(counts.values()), len(messages))
        closing = sum(1 for m in messages if m.fault.closing)
        fired = closing - len(self.stack.upstream.closing_senders)
        print(f"  upstream: {self.stack.upstream.connections} connections for "
              f"{len(self.stack.upstream.messages)} messages; 421 at MAIL on a kept "
              f"connection {fired} of {closing} times")
        if closing >= 5:
            self.assertGreater(fired, 0, "no 421 met a kept connection: is the pool in play?")

    @defer.inlineCallbacks
    def client(self, connections):
        """One client: takes the next connection's worth of messages until none is left."""
        while connections:
            batch = connections.pop(0)
            session = yield self.stack.session()
            for message in batch:
                message.reply = yield submit(
                    session, message.sender.encode(), message.recipient.encode(), message.content
                )
            yield session.command(b"QUIT", expect=221)
            yield session.close()

    def check(self, messages):
        """
        Hold every message to the rule of the module docstring; the outcome counts.  All
        violations are collected first, so one failure shows the whole picture.
        """
        copies = defaultdict(list)
        for received in self.stack.upstream.messages:
            copies[received.recipients].append(received)
        asked = Counter(request.json["to"][0] for request in self.stack.api.requests)
        violations = [f"upstream got unplanned mail for {recipients}"
                      for recipients in copies.keys() - {(m.recipient,) for m in messages}]
        counts = Counter()
        for message in messages:
            outcome, problem = self.judge(message, copies[(message.recipient,)])
            if asked[message.recipient] != 1:
                problem = problem or f"API asked {asked[message.recipient]} times"
            if problem:
                violations.append(f"message {message.number} ({message.fault.name}, "
                                  f"reply {message.reply}): {problem}")
            counts[outcome] += 1
        self.assertEqual(violations, [], f"SMTPPROXY_SEED={self.seed}")
        return counts

    def judge(self, message, copies):
        """The outcome of one message and what is wrong with it, if anything."""
        code, text = message.fault.reply
        reply = message.reply
        matches = reply.text == text or (text.endswith(" ") and reply.text.startswith(text))
        if reply.code != code or not matches:
            return None, f"expected {code} {text!r}"
        exact = [c for c in copies if c.data == message.expected and c.sender == message.sender]
        if reply.code == 250 or message.fault.outcome == DUPLICATE:
            if len(copies) != 1 or len(exact) != 1:
                return None, f"{len(copies)} copies at the upstream, {len(exact)} exact"
            return message.fault.outcome, None
        if copies:
            return None, f"refused with {reply.code} but {len(copies)} copies at the upstream"
        return message.fault.outcome, None

    def report(self, messages, counts, connections, seconds):
        by_fault = Counter(m.fault.name for m in messages)
        print(f"{len(messages)} messages, {CLIENTS} concurrent clients, {connections} connections, "
              f"{seconds:.1f} s")
        for outcome in (DELIVERED, DENIED, TEMPORARY, DUPLICATE):
            causes = ", ".join(f"{fault.name} {by_fault[fault.name]}" for fault in FAULTS
                               if fault.outcome == outcome and fault.name != "none")
            print(f"  {outcome}: {counts[outcome]}" + (f" ({causes})" if causes else ""))
