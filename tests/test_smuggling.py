"""
Smuggling and injection (issue 3), each tried through the whole proxy with real TLS.

  - SMTP smuggling: a message that hides a second transaction behind an end-of-data
    look-alike (bare CR, bare LF, every mix of them around a dot, NUL tricks), followed by a
    legitimate pipelined transaction, sent in one write, a byte at a time, and cut in two at
    every byte, in both C{--bare_lf} modes.  The hidden transaction never reaches the
    upstream, nor does a bare CR or LF; the client gets 550 5.6.0 for a message with a bare
    CR (or, in reject mode, a bare LF), the message with its line ends normalised and its
    lone dots stuffed otherwise, and the right reply to everything after it.
  - STARTTLS command injection: plaintext pipelined behind STARTTLS, also cut inside the
    STARTTLS line, straddling the TLS start or sent once TLS has begun, is never answered
    inside TLS and leaves no state behind.
  - Header and command injection through the policy API's answer (C{headers}, C{from},
    C{reason}) and through client input (addresses, AUTH): refused before a byte goes
    upstream, or made harmless, and every reply is a single line.
"""

import base64
import re
from collections import Counter, defaultdict

import attrs
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from smtpproxy import Limits, build_factory, replies
from tests.support.client import connect, data_block, start_data, submit
from tests.support.loopback import listen_loopback
from tests.support.mail import AUTH_PLAIN, MESSAGE, POLICY_HEADER, checked
from tests.support.splitting import listen_splitting
from tests.support.stack import PASSWORD, Stack

CRLF, LF, CR = b"\r\n", b"\n", b"\r"
BARE_LOOKALIKES = [before + b"." + after
                   for before in (CRLF, LF, CR) for after in (CRLF, LF, CR)
                   if (before, after) != (CRLF, CRLF)]
BARE_LOOKALIKES += [b"\r\n.\r\r\n", b"\r\n.\n\r\n", b"\r\n\n.\r\n"]
"""Every end of data with a bare CR or LF on either side of the dot, or next to a real one."""
START_LOOKALIKES = [b".\n", b".\r", b".\r\r\n", b"\n.\r\n", b"\r.\r\n"]
"""Look-alikes as the very first bytes of the data, where the dot needs no line end before it."""
CLEAN_LOOKALIKES = [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n .\r\n", b"\r\n..\r\n"]
"""Look-alikes without a bare line end: the message is valid, and all of it is data."""

SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nevil\r\n"
FIRST_HEAD = b"Subject: 1\r\n"
SECOND = b"Subject: 2\r\n\r\nok\r\n"
SECOND_BARE = b"Subject: 2\rbare\r\n\r\nok\r\n"
"""A second message the proxy refuses itself, before any API call: its header has a bare CR."""
SENDER = b"alice@example.com"
QUEUED = "2.0.0 Ok: queued as "


def shape(reply):
    """A reply as C{(code, text)}, with the upstream's queue id (which varies) cut off."""
    if reply.code == 250 and reply.text.startswith(QUEUED):
        return reply.code, QUEUED
    return reply.code, reply.text


def log_events(case):
    """Every log event from now until C{case} ends: a list that fills as they come."""
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def as_recorded(head, body):
    """
    What the upstream records for a message sent in wire form as C{head}, empty line,
    C{body} (or C{body} alone when it opens the data with its own empty line): the API's
    header added, leading dots unstuffed.
    """
    lines = body.split(CRLF)
    separator = b"" if not head and body.startswith(CRLF) else CRLF
    return head + POLICY_HEADER + separator + CRLF.join(line[1:] if line[:1] == b"." else line
                                                          for line in lines)


def normalized(body):
    """
    Whole lines as the proxy relays them in normalize mode: each ends with CRLF, where the
    client may have sent a bare LF, and a lone dot (never the end here) gets its stuffing.
    """
    lines = [line.removesuffix(CR) for line in body.split(LF)[:-1]]
    return b"".join((b".." if line == b"." else line) + CRLF for line in lines)


class Attack:
    """
    One look-alike, as the data after a 354: a message hiding L{SMUGGLED} behind it, the
    message's real end, then a legitimate transaction pipelined behind it.

    @ivar at_start: the look-alike opens the data; otherwise it follows a header and "hi".
    @ivar refuse_second: pipeline L{SECOND_BARE}, not L{SECOND}: the many rounds of a test
        then skip the API's and the upstream's round trips for it.
    @ivar normalize: the proxy runs with C{--bare_lf=normalize}: only a bare CR makes the
        message refused, and a bare LF is a line end.
    """

    def __init__(self, lookalike, number, at_start, refuse_second, normalize):
        self.lookalike = lookalike
        self.first = b"f%d@example.net" % number
        self.second = b"s%d@example.net" % number
        self.refuse_second = refuse_second
        line_ends = lookalike.replace(CRLF, b"")
        self.bare = CR in line_ends or (LF in line_ends and not normalize)
        self._body = (b"" if at_start else b"hi") + lookalike + SMUGGLED
        self._relayed = normalized(self._body) if normalize else self._body
        self._head = b"" if at_start else FIRST_HEAD
        head = b"" if at_start else FIRST_HEAD + CRLF
        self.data = (head + self._body + b".\r\n"
                     + b"MAIL FROM:<" + SENDER + b">\r\nRCPT TO:<" + self.second + b">\r\nDATA\r\n"
                     + data_block(SECOND_BARE if refuse_second else SECOND))

    def expected_replies(self):
        """The replies to L{data}, in L{shape}."""
        first = (550, replies.BARE_LINE_END.text) if self.bare else (250, QUEUED)
        second = (550, replies.BARE_LINE_END.text) if self.refuse_second else (250, QUEUED)
        return [first, (250, replies.SENDER_OK.text), (250, replies.RECIPIENT_OK.text),
                (354, replies.START_DATA.text), second]

    def expected_asked(self):
        """
        How often per run the API may be asked about each recipient, at least and at most:
        never about the hidden one.  A message with a bare line end in its body is refused
        at its end, and asked about if its header block was complete before that (the
        exchange is then cancelled).
        """
        return {self.first: (0, 1) if self.bare else (1, 1),
                self.second: (0, 0) if self.refuse_second else (1, 1)}

    def expected_at_upstream(self):
        """What the upstream must have for one run, per recipient."""
        expected = {}
        if not self.bare:
            expected[self.first] = as_recorded(self._head, self._relayed)
        if not self.refuse_second:
            expected[self.second] = as_recorded(b"Subject: 2\r\n", b"ok\r\n")
        return expected


class DataSmugglingTests(TestCase):
    limits = Limits()
    CUT_SESSIONS = 2
    """
    Sessions per look-alike for the cuts, which run side by side, each with its own
    listener; all of them stay under the default limit of connections per address (50) and
    the loopback listener's backlog (also 50).
    """

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp(), self.limits)
        self.addCleanup(self.stack.close)

    def attacks(self, refuse_second=False):
        lookalikes = [(lookalike, False) for lookalike in BARE_LOOKALIKES + CLEAN_LOOKALIKES]
        lookalikes += [(lookalike, True) for lookalike in START_LOOKALIKES]
        normalize = self.limits.bare_lf == "normalize"
        return [Attack(lookalike, number, at_start, refuse_second, normalize)
                for number, (lookalike, at_start) in enumerate(lookalikes)]

    def splitting(self):
        """Another listener for the proxy whose sessions get their input cut as told."""
        splitting = listen_splitting(reactor, self.stack.factory)
        self.addCleanup(splitting.server.close)
        return splitting

    @defer.inlineCallbacks
    def attempt(self, attack, cuts=(None,), splitting=None):
        """
        Send C{attack} once per entry of C{cuts} on one session, cut after that many bytes
        when not None (by C{splitting}, whose port the session uses); fail on the first wrong
        reply.  Fires with C{(attack, rounds)}.
        """
        client = yield self.stack.session(splitting and splitting.server.port)
        self.addCleanup(client.close)
        for cut in cuts:
            yield start_data(client, SENDER, attack.first)
            if cut is not None:
                splitting.cut_after(cut)
            client.send(attack.data)
            got = [shape(reply) for reply in (yield client.replies(5))]
            self.assertEqual(got, attack.expected_replies(), f"{attack.lookalike!r} cut after {cut}")
        return attack, len(cuts)

    def check(self, runs):
        """
        The API was asked about the messages of the runs as often as they allow, and never
        about a hidden one; the upstream has exactly what the runs should have delivered.
        """
        may_ask, delivered = defaultdict(lambda: [0, 0]), defaultdict(list)
        for attack, rounds in runs:
            for recipient, (least, most) in attack.expected_asked().items():
                bounds = may_ask[(SENDER.decode(), recipient.decode())]
                bounds[0] += least * rounds
                bounds[1] += most * rounds
            for recipient, data in attack.expected_at_upstream().items():
                delivered[(SENDER.decode(), recipient.decode())] += [data] * rounds
        asked = Counter((r.json["from"], *r.json["to"]) for r in self.stack.api.requests)
        self.assertEqual(asked.keys() - may_ask.keys(), set())
        for envelope, (least, most) in may_ask.items():
            self.assertTrue(least <= asked[envelope] <= most, (envelope, asked[envelope]))
        got = defaultdict(list)
        for message in self.stack.upstream.messages:
            got[(message.sender, *message.recipients)].append(message.data)
            self.assertNotIn(CR, message.data.replace(CRLF, b""))
            self.assertNotIn(LF, message.data.replace(CRLF, b""))
        self.assertEqual(got, delivered)

    @defer.inlineCallbacks
    def test_one_write(self):
        runs = yield defer.gatherResults([self.attempt(a) for a in self.attacks()])
        self.check(runs)

    @defer.inlineCallbacks
    def test_one_byte_at_a_time(self):
        splitting = self.splitting()
        splitting.bytewise = True
        runs = yield defer.gatherResults([self.attempt(a, splitting=splitting)
                                          for a in self.attacks()])
        self.check(runs)

    @defer.inlineCallbacks
    def test_cut_at_every_byte(self):
        """Every cut of every attack, spread over several sessions per look-alike."""
        runs = []
        for attack in self.attacks(refuse_second=True):
            cuts = range(1, len(attack.data))
            for first in range(self.CUT_SESSIONS):
                runs.append(self.attempt(attack, cuts[first::self.CUT_SESSIONS], self.splitting()))
        self.check((yield defer.gatherResults(runs)))


class RejectModeDataSmugglingTests(DataSmugglingTests):
    """The same attacks against C{--bare_lf=reject}: every bare LF makes a message refused."""

    limits = Limits(bare_lf="reject")


INJECTIONS = [
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
    b"EHLO evil.example\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<evil@example.com>\r\n"
    b"RCPT TO:<victim@example.net>\r\nDATA\r\nSubject: injected\r\n\r\n.\r\n",
]
"""Plaintext an attacker in the middle appends to the client's STARTTLS line."""


class StartTLSInjectionTests(TestCase):
    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def secured(self, injected, port=None):
        """
        A client that sent EHLO, then STARTTLS with C{injected} in the same write, and
        completed TLS (to C{port} when given, else the proxy's own).
        """
        client = yield connect(reactor, port or self.stack.port)
        self.addCleanup(client.close)
        yield client.command(b"EHLO before.example", expect=250)
        yield client.starttls(self.stack.client_tls, pipelined=injected)
        return client

    @defer.inlineCallbacks
    def assert_fresh(self, client):
        """
        Nothing was answered inside TLS, the session is open, and it has no login: whatever
        was injected (AUTH, MAIL, QUIT) left nothing behind.
        """
        reply = yield client.command(b"NOOP")
        self.assertEqual((shape(reply), client.unsolicited), ((250, replies.NOOP_OK.text), []))
        reply = yield client.command(b"MAIL FROM:<alice@example.com>")
        self.assertEqual(shape(reply), (530, replies.AUTH_REQUIRED.text))

    @defer.inlineCallbacks
    def test_pipelined_commands_are_discarded(self):
        clients = yield defer.gatherResults([self.secured(injected) for injected in INJECTIONS])
        for client in clients:
            yield self.assert_fresh(client)
        self.assertEqual((self.stack.api.requests, self.stack.upstream.connections), ([], 0))

    @defer.inlineCallbacks
    def test_cut_inside_the_starttls_line(self):
        """
        The proxy gets C{STARTT} first, then the rest of the line and the injection.  (A cut
        after the STARTTLS line cannot be made above TLS: plaintext that arrives after it
        goes to the TLS layer, see L{test_plaintext_after_the_tls_start}.)
        """
        injected = INJECTIONS[-1]
        clients = []
        for cut in range(1, len(b"STARTTLS\r\n")):
            splitting = listen_splitting(reactor, self.stack.factory)
            self.addCleanup(splitting.server.close)
            splitting.cut_after(len(b"EHLO before.example\r\n") + cut)
            clients.append(self.secured(injected, splitting.server.port))
        for client in (yield defer.gatherResults(clients)):
            yield self.assert_fresh(client)
        self.assertEqual((self.stack.api.requests, self.stack.upstream.connections), ([], 0))

    @defer.inlineCallbacks
    def test_command_straddling_the_tls_start(self):
        """A command begun in plaintext and finished inside TLS is no command at all."""
        client = yield self.secured(b"MAIL FROM:<evil@exa")
        reply = yield client.command(b"mple.com>")
        self.assertEqual(shape(reply), (500, replies.UNKNOWN_COMMAND.text))
        yield self.assert_fresh(client)

    @defer.inlineCallbacks
    def test_plaintext_after_the_tls_start(self):
        """
        Plaintext sent once the proxy has said 220 is taken for a TLS handshake, which it is
        not: the connection ends and nothing is ever answered.
        """
        client = yield connect(reactor, self.stack.port)
        self.addCleanup(client.close)
        yield client.command(b"EHLO before.example", expect=250)
        yield client.command(b"STARTTLS", expect=220)
        client.send(INJECTIONS[-1])
        yield self.assertFailure(client.replies(1), ConnectionDone, ConnectionLost)
        self.assertEqual((self.stack.api.requests, self.stack.upstream.connections), ([], 0))

    @defer.inlineCallbacks
    def test_helo_forgotten(self):
        """
        The EHLO before TLS (and one injected behind STARTTLS) is forgotten: a client that
        does not say EHLO again is reported to the API without one.
        """
        client = yield self.secured(b"EHLO injected.example\r\n")
        yield client.command(AUTH_PLAIN, expect=235)
        reply = yield submit(client, SENDER, b"bob@example.net", MESSAGE)
        self.assertEqual(reply.code, 250)
        (request,) = self.stack.api.requests
        self.assertEqual(request.json["helo"], "")


class ApiAnswerInjectionTests(TestCase):
    """
    The API is trusted to decide, not to be well-formed: nothing in its answer reaches the
    upstream or the client's dialogue unless docs/protocol.rst section 4 allows it.
    """

    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)

    @defer.inlineCallbacks
    def replies_to(self, answers):
        """
        The client's reply to one message per API answer, all on one session, each followed
        by a NOOP that must get its own reply (a reply split in two would answer it instead).
        """
        client = yield self.stack.session()
        self.addCleanup(client.close)
        got = []
        for answer in answers:
            self.stack.api.answer = lambda request, answer=answer: answer
            reply = yield submit(client, SENDER, b"bob@example.net", MESSAGE)
            self.assertEqual(len(reply.lines), 1, reply)
            noop = yield client.command(b"NOOP")
            self.assertEqual(shape(noop), (250, replies.NOOP_OK.text), f"after {answer!r}")
            got.append(shape(reply))
        return got

    @defer.inlineCallbacks
    def assert_unavailable(self, answers):
        """Each answer is a broken API: 451, and the upstream is never contacted."""
        got = yield self.replies_to(answers)
        unavailable = (replies.POLICY_UNAVAILABLE.code, replies.POLICY_UNAVAILABLE.text)
        self.assertEqual(got, [unavailable] * len(answers))
        self.assertEqual(self.stack.upstream.connections, 0)

    def test_header_names(self):
        names = ["X-A\r\nBcc", "X-A\nBcc", "X-A\rBcc", "X-A:", "Bcc: evil@example.com", "X A",
                 "X\x00A", "", "X-Ü", " X-A", "X-A "]
        return self.assert_unavailable(
            [{"allow": True, "headers": [{"name": name, "value": "v"}]} for name in names])

    def test_header_values(self):
        values = ["a\r\nBcc: evil@example.com", "a\nBcc: evil@example.com", "a\rb", "a\x00b",
                  "a\r\n\r\nnew body", "\r\n.\r\nMAIL FROM:<evil@example.com>"]
        return self.assert_unavailable(
            [{"allow": True, "headers": [{"name": "X-A", "value": value}]} for value in values])

    def test_sender(self):
        senders = ["evil@example.com>\r\nRCPT TO:<victim@example.net", "evil@example.com\r\n",
                   "evil@example.com> SIZE=1", "<evil@example.com>", "evil@example.com>",
                   "e vil@example.com", "evil@example.com\x00", "evil@exa mple.com", None, 42]
        return self.assert_unavailable([{"allow": True, "from": sender} for sender in senders])

    @defer.inlineCallbacks
    def test_reason(self):
        """A reason is sanitised into one line of at most 200 characters."""
        fake = "\r\n250 2.0.0 Ok: queued as FAKE"
        got = yield self.replies_to([
            {"allow": False, "reason": "no" + fake},
            {"allow": False, "temporary": True, "reason": "later" + fake},
            {"allow": False, "reason": "\x00\x1b[31mred\x7f\tand\nmore"},
            {"allow": False, "reason": "x" * 300 + "\r\n250 hidden"},
        ])
        self.assertEqual(got, [
            (550, "5.7.1 no 250 2.0.0 Ok: queued as FAKE"),
            (450, "4.7.1 later 250 2.0.0 Ok: queued as FAKE"),
            (550, "5.7.1 [31mred and more"),
            (550, "5.7.1 " + "x" * 200),
        ])
        self.assertEqual(self.stack.upstream.connections, 0)

    @defer.inlineCallbacks
    def test_what_is_allowed_passes_exactly(self):
        """The control: a header value with a colon and a replacement sender go through."""
        yield self.replies_to([{"allow": True, "from": "bounce@example.org",
                                "headers": [{"name": "X-Note", "value": "a: b; c=<d>"}]}])
        (message,) = self.stack.upstream.messages
        self.assertEqual((message.sender, message.recipients), ("bounce@example.org", ("bob@example.net",)))
        self.assertEqual(message.data, MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Note: a: b; c=<d>\r\n\r\n", 1))


BAD_ADDRESSES = [
    b"<a@example.com\r>",
    b"<a\r@example.com>",
    b"<a\x00@example.com>",
    b"<a@example.com\x00>",
    b"<a>b@example.com>",
    b"<a<b@example.com>",
    b"<a b@example.com>",
    b"<a@example.com> RCPT TO:<victim@example.net>",
    b"<a@example.com>\x00",
    b"a@example.com",
]
"""
Paths that would end an upstream MAIL or RCPT early, or add to it, if passed on.  A line
break in a path is no such thing: it ends the command line (see L{test_line_breaks}).
"""


class ClientInputInjectionTests(TestCase):
    def setUp(self):
        self.stack = Stack(reactor, self.mktemp())
        self.addCleanup(self.stack.close)

    def assert_refused(self, reply, command):
        self.assertTrue(500 <= reply.code < 600 and len(reply.lines) == 1,
                        f"{command!r} answered {reply}")

    @defer.inlineCallbacks
    def test_addresses(self):
        """
        Each bad MAIL is refused and opens no transaction; each bad RCPT is refused and adds
        no recipient: the upstream sees only the one good envelope.
        """
        client = yield self.stack.session()
        self.addCleanup(client.close)
        for path in BAD_ADDRESSES:
            self.assert_refused((yield client.command(b"MAIL FROM:" + path)), path)
            reply = yield client.command(b"RCPT TO:<bob@example.net>")
            self.assertEqual(shape(reply), (503, replies.NEED_SENDER.text), path)
        yield client.command(b"MAIL FROM:<alice@example.com>", expect=250)
        for path in BAD_ADDRESSES:
            self.assert_refused((yield client.command(b"RCPT TO:" + path)), path)
        yield client.command(b"RCPT TO:<bob@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(data_block(MESSAGE))
        (reply,) = yield client.replies(1)
        self.assertEqual(reply.code, 250)
        (request,) = self.stack.api.requests
        self.assertEqual((request.json["from"], request.json["to"]),
                         ("alice@example.com", ["bob@example.net"]))
        (message,) = self.stack.upstream.messages
        self.assertEqual((message.sender, message.recipients), ("alice@example.com", ("bob@example.net",)))
        self.assertEqual(message.data, checked(MESSAGE))

    @defer.inlineCallbacks
    def test_line_breaks(self):
        """
        A line break inside a path ends the command line there, a bare LF as CRLF does: two
        commands, both refused, and no transaction is left open.
        """
        client = yield self.stack.session()
        self.addCleanup(client.close)
        for line_end in [CRLF, LF]:
            client.send(b"MAIL FROM:<a@example.com" + line_end + b"RCPT TO:<victim@example.net>>\r\n")
            broken, rest = yield client.replies(2)
            self.assert_refused(broken, f"MAIL cut by {line_end!r}")
            self.assert_refused(rest, "its rest")
            reply = yield client.command(b"RCPT TO:<bob@example.net>")
            self.assertEqual(shape(reply), (503, replies.NEED_SENDER.text))
        self.assertEqual(self.stack.api.requests, [])

    @defer.inlineCallbacks
    def test_auth_lines(self):
        """Raw bytes in AUTH lines are refused; the session stays usable and logged out."""
        client = yield self.stack.session(login=False)
        self.addCleanup(client.close)
        plain = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
        for exchange in [
            [b"AUTH PLAIN " + plain[:8] + b"\r" + plain[8:]],
            [b"AUTH PLAIN " + plain + b"\x00"],
            [b"AUTH PLAIN " + base64.b64encode(b"\0al\0ice\0" + PASSWORD.encode())],
            [b"AUTH LOGIN " + base64.b64encode(b"al\0ice")],
            [b"AUTH PLAIN", plain + b"\rMAIL FROM:<evil@example.com>"],
            [b"AUTH LOGIN", base64.b64encode(b"alice"), b"\x00" + base64.b64encode(b"pw")],
        ]:
            *steps, last = exchange
            for step in steps:
                yield client.command(step, expect=334)
            self.assert_refused((yield client.command(last)), exchange)
            reply = yield client.command(b"MAIL FROM:<alice@example.com>")
            self.assertEqual(shape(reply), (530, replies.AUTH_REQUIRED.text), exchange)
        self.assertEqual((client.unsolicited, self.stack.api.requests), ([], []))

    @defer.inlineCallbacks
    def test_username_with_line_breaks(self):
        """
        A username is the API's to judge, so one with CRLF and a command in it is recorded
        as it is; it reaches the API as a JSON string, never the upstream, and no log line
        is broken by it (or shows the password).
        """
        events = log_events(self)
        username = "alice\r\nMAIL FROM:<evil@example.com>\r\n"
        client = yield self.stack.session(login=False)
        self.addCleanup(client.close)
        plain = base64.b64encode(b"\0" + username.encode() + b"\0" + PASSWORD.encode())
        yield client.command(b"AUTH PLAIN " + plain, expect=235)
        reply = yield submit(client, SENDER, b"bob@example.net", MESSAGE)
        yield client.command(b"QUIT", expect=221)
        yield client.wait_closed()
        self.assertEqual(reply.code, 250)
        (request,) = self.stack.api.requests
        self.assertEqual(request.json["username"], username)
        (message,) = self.stack.upstream.messages
        self.assertEqual((message.sender, message.recipients), ("alice@example.com", ("bob@example.net",)))
        logged = [formatEvent(event) for event in events]
        self.assertTrue(any("MAIL FROM:<evil@example.com>" in line for line in logged), logged)
        self.assertEqual([line for line in logged if "\n" in line or "\r" in line or PASSWORD in line], [])

    @defer.inlineCallbacks
    def test_control_characters_kept_out_of_the_transcript(self):
        """
        The SMTP transcript (C{--smtplog}) shows client input, so a control character in it
        (a bare CR that makes a terminal overwrite the line, an escape sequence) would let a
        client forge or hide transcript lines: none may reach it.
        """
        events = log_events(self)
        transcribing = build_factory(attrs.evolve(self.stack.config, transcript=True), reactor)
        self.addCleanup(transcribing.close)
        server = listen_loopback(reactor, transcribing)
        self.addCleanup(server.close)
        client = yield self.stack.session(server.port)
        self.addCleanup(client.close)
        for line in [b"MAIL FROM:<a@example.com>\r2026-01-01 [smtpproxy.smtp#info] 1 > 250 forged",
                     b"RCPT TO:<b@example.net>\x1b[1A\x1b[2K", b"EHLO client\rexample"]:
            yield client.command(line)
        transcript = [formatEvent(event) for event in events
                      if event.get("log_namespace") == "smtpproxy.smtp"]
        self.assertTrue(any("forged" in line for line in transcript), transcript)
        self.assertEqual([line for line in transcript if re.search("[\x00-\x1f\x7f]", line)], [])
