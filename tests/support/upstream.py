"""
A recording upstream SMTP server (docs/protocol.rst section 5) built on Twisted's own ESMTP server.

It keeps what a delivery test needs to check (envelope, the message content exactly as
received after unstuffing, EHLO name, login, TLS) and can be scripted to refuse recipients,
refuse or drop at the final dot, or stall at any step until the test releases it, so timeouts
and "250 only after the upstream accepted" can be proven without sleeping.

Two private parts of Twisted's SMTP server are touched, both guarded by tests/test_support.py:
  - L{_Session._messageHandled} is overridden: Twisted always answers the final dot with its
    own 250/550 texts, while tests need a scripted code and text, and a queue id
    (docs/twisted.rst fight A);
  - the name-mangled C{_SMTP__inbody} flag is set at DATA: Twisted otherwise inserts an empty
    line before a message whose first line has no colon, and the recording would not be what
    was sent.
"""

import functools

import attrs
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.mail import smtp
from twisted.mail.imap4 import PLAINCredentials
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tests.support.loopback import listen_loopback

GREETING = "greeting"
"""L{FakeUpstream.stall} step: accept the connection but send no 220."""

END_OF_DATA = "."
"""L{FakeUpstream.stall} step: take the whole message but answer nothing after the final dot."""


@attrs.frozen
class ReceivedMessage:
    """
    A message the upstream accepted.

    ``data`` is every line of the content (dots unstuffed) followed by CRLF, so for a
    well-formed message it equals what the sender meant to send.  ``helo`` is the EHLO/HELO
    argument, ``login`` the AUTH user name (None without AUTH), ``tls`` whether TLS (STARTTLS
    or implicit) was in effect.
    """

    sender: str
    recipients: tuple
    data: bytes
    queue_id: str
    helo: str
    login: str
    tls: bool


@attrs.frozen
class Script:
    """
    How the upstream treats one message once its recipients are in: the reply to its final
    dot (C{None}: accept with a queue id), whether to drop the connection after recording it
    instead, where to stall (C{"DATA"}, L{END_OF_DATA} or C{None}), and whether to hang up
    once it has answered the dot (an upstream closing an idle connection); see
    L{FakeUpstream.scripts}.
    """

    data_reply: tuple = None
    drop_after_data: bool = False
    stall: str = None
    hang_up_after: bool = False


def start_upstream(
    reactor,
    *,
    rcpt_refusals=None,
    data_reply=None,
    drop_after_data=False,
    tls=None,
    implicit_tls=False,
    logins=None,
    hostname="upstream.test",
    offers=(),
):
    """
    Listen on 127.0.0.1 and return a L{FakeUpstream}.

    @param rcpt_refusals: address -> (code, text), e.g.
        C{{"full@example.net": (452, "4.2.2 Mailbox full")}}; also settable later.
    @param data_reply: (code, text) for the final dot instead of
        C{250 2.0.0 Ok: queued as <id>}; a 4xx/5xx refuses the message.
    @param drop_after_data: record the message, then close without replying to the dot.
    @param tls: server C{CertificateOptions}: offer STARTTLS.
    @param implicit_tls: with C{tls}, speak TLS from the first byte (port 465 style) instead.
    @param logins: username -> password: offer AUTH PLAIN/LOGIN and require it before MAIL.
    @param offers: further EHLO keywords, with their value after a space
        (C{("DSN", "SMTPUTF8", "SIZE 200000")}); also settable later.  The
        parameters they stand for are taken (and recorded in L{commands}),
        not acted on.
    """
    upstream = FakeUpstream(
        reactor, rcpt_refusals, data_reply, drop_after_data, tls, implicit_tls, logins, hostname
    )
    upstream.offers = tuple(offers)
    return upstream


class FakeUpstream:
    """
    @ivar port: the TCP port.
    @ivar hostname: the name in the greeting and the EHLO reply.
    @ivar messages: every L{ReceivedMessage}, in order (including one whose reply was dropped).
    @ivar commands: per connection, in the order they were accepted, the command lines it
        received (message data and AUTH continuation lines left out), so a test sees what each one
        carried: C{[[b"EHLO proxy.test", b"MAIL FROM:<a@b.example>", ...], ...]}.
    @ivar rcpt_refusals, data_reply, drop_after_data: the script; may change between messages.
    @ivar sender_refusals: address -> (code, text) for MAIL FROM, like C{rcpt_refusals}.
    @ivar closing_senders: addresses whose MAIL FROM, on a connection that already carried
        a message, gets C{421} and a close, once each (an upstream that timed out a kept
        connection just as it is used).
    @ivar offers: further EHLO keywords (see L{start_upstream}).
    @ivar scripts: first recipient -> L{Script}: that message's own script instead of
        C{data_reply}, C{drop_after_data} and L{stall}, so concurrent messages can each meet
        a different fault.  Its stall applies from the recipients on, at C{"DATA"} or
        L{END_OF_DATA}.
    @ivar collector: the C{IMessage} class each message's content goes to; its
        C{eomReceived} result is L{ReceivedMessage.data}.  L{_Collector} keeps the bytes;
        a test streaming more than memory holds can count them instead.
    """

    def __init__(
        self, reactor, rcpt_refusals, data_reply, drop_after_data, tls, implicit_tls, logins, hostname
    ):
        self.messages = []
        self.commands = []
        self.offers = ()
        self.rcpt_refusals = dict(rcpt_refusals or {})
        self.sender_refusals = {}
        self.closing_senders = set()
        self.data_reply = data_reply
        self.drop_after_data = drop_after_data
        self.hostname = hostname
        self._tls = tls
        self._implicit_tls = implicit_tls
        self._portal = None
        if logins:
            checker = InMemoryUsernamePasswordDatabaseDontUse()
            for user, password in logins.items():
                checker.addUser(user.encode(), password.encode())
            self._portal = Portal(_Realm(self), [checker])
        self.scripts = {}
        self.collector = _Collector
        self._stall = None
        self._reached = None
        self._stalled = []
        factory = Factory.forProtocol(functools.partial(_Session, self))
        factory.noisy = False
        if implicit_tls:
            factory = TLSMemoryBIOFactory(tls, False, factory)
        self._server = listen_loopback(reactor, factory)
        self.port = self._server.port

    @property
    def connections(self):
        """How many connections the upstream accepted so far."""
        return self._server.connections

    def stall(self, step, count=1):
        """
        From now on, stop answering when a connection reaches C{step}: L{GREETING}, a command
        verb (C{"EHLO"}, C{"MAIL"}, C{"RCPT"}, C{"DATA"}, ...) or L{END_OF_DATA}.  The stalled
        line and everything after it wait, unanswered, until L{release} or L{close}.

        Returns a Deferred that fires when C{count} connections stop there, so a test knows
        the other side is now waiting.
        """
        self._stall = step
        self._reached = defer.Deferred()
        self._reached_count = count
        return self._reached

    def release(self):
        """Lift the stall; waiting connections carry on where they stopped."""
        self._stall = None
        stalled, self._stalled = self._stalled, []
        for session in stalled:
            session.resume()

    def wait_idle(self):
        """A Deferred that fires once no connection is open (the client has hung up)."""
        return self._server.wait_idle()

    def close(self):
        """Stop listening and drop every connection, stalled or not; a Deferred."""
        return self._server.close()

    def _script(self, delivery):
        """
        The L{Script} of C{delivery}'s message (C{delivery} is the connection's latest
        transaction, or None before its first MAIL).
        """
        recipients = delivery.recipients if delivery is not None else ()
        own = self.scripts.get(recipients[0]) if recipients else None
        return own or Script(self.data_reply, self.drop_after_data, self._stall)

    def _stalls_at(self, step, delivery):
        return step is not None and step == self._script(delivery).stall

    def _hold(self, session):
        """
        Park C{session} (already holding its input) until L{release}; tell the test that
        called L{stall}, if one did (a message's own L{Script} stalls with nobody waiting).
        """
        self._stalled.append(session)
        waiting = self._reached is not None and not self._reached.called
        if waiting and len(self._stalled) >= self._reached_count:
            self._reached.callback(None)

    def _forget(self, session):
        if session in self._stalled:
            self._stalled.remove(session)

    def _accept(self, transaction, data, tls):
        message = ReceivedMessage(
            sender=transaction.sender,
            recipients=tuple(transaction.recipients),
            data=data,
            queue_id=f"Q{len(self.messages) + 1:05d}",
            helo=transaction.helo,
            login=transaction.login,
            tls=tls,
        )
        self.messages.append(message)
        return message


def _ascii_shadow(line):
    """
    Twisted's address parser takes ASCII only: a command with UTF-8 (an
    SMTPUTF8 address) goes on with C{?} for each non-ASCII byte, which is
    atext; L{FakeUpstream.commands} keeps the line as received.
    """
    return line if line.isascii() else bytes(b if b < 128 else 63 for b in line)


class _Session(smtp.ESMTP):
    timeout = None  # no idle timer, so nothing is left scheduled
    noisy = False
    MAX_LENGTH = 1 << 26  # docs/protocol.rst section 2: a line of any length is data, so the proxy may relay one

    def __init__(self, upstream):
        challengers = {}
        if upstream._portal is not None:
            challengers = {b"PLAIN": PLAINCredentials, b"LOGIN": smtp.LOGINCredentials}
        super().__init__(challengers, None if upstream._implicit_tls else upstream._tls)
        self.host = upstream.hostname
        self.portal = upstream._portal
        self.deliveryFactory = _Deliveries(upstream, None)
        self._upstream = upstream
        self._held = None
        self._greeted = False
        self._transaction = None
        self._carried = 0
        self._commands = []
        upstream.commands.append(self._commands)

    def greeting(self):
        return self.host + b" ESMTP fake upstream"

    def do_XCLIENT(self, rest):
        """Postfix's XCLIENT, where offered: a new greeting, EHLO again (recorded in L{commands})."""
        self._helo = None
        self.sendCode(220, self.greeting())

    def extensions(self):
        ext = super().extensions()
        for offer in self._upstream.offers:
            keyword, _, value = offer.partition(" ")
            ext[keyword.encode()] = [value.encode()] if value else None
        return ext

    def connectionMade(self):
        if self._upstream._stalls_at(GREETING, None):
            self._held = []
            self._upstream._hold(self)
        else:
            self._greet()

    def _greet(self):
        self._greeted = True
        super().connectionMade()

    def lineReceived(self, line):
        if self._held is not None:
            self._held.append(line)
        elif self._upstream._stalls_at(self._step(line), self.delivery):
            self._held = [line]
            self._upstream._hold(self)  # last: the test may release us from in here
        else:
            if self.mode == smtp.COMMAND:
                self._commands.append(line)
                if self._closes_at(line):
                    return
                line = _ascii_shadow(line)
            super().lineReceived(line)

    def _closes_at(self, line):
        """A MAIL FROM of one of L{FakeUpstream.closing_senders} on a used connection: 421."""
        closing = self._upstream.closing_senders
        sender = line[11:].partition(b">")[0].decode("utf-8", "replace")
        if not (self._carried and line[:11].upper() == b"MAIL FROM:<" and sender in closing):
            return False
        closing.discard(sender)
        self.sendCode(421, b"4.4.2 upstream.test Idle timeout, closing connection")
        self.transport.loseConnection()
        return True

    def _step(self, line):
        if self.mode == smtp.COMMAND:
            verb = line.split(None, 1)[:1]
            return verb[0].decode("ascii", "replace").upper() if verb else None
        if self.mode == smtp.DATA and line == b".":
            return END_OF_DATA
        return None

    def resume(self):
        held, self._held = self._held, None
        if not self._greeted:
            self._greet()
        for line in held:
            if self.transport.disconnecting:
                return
            self.lineReceived(line)

    def connectionLost(self, reason):
        self._upstream._forget(self)
        super().connectionLost(reason)

    def do_DATA(self, rest):
        self._transaction = self.delivery
        super().do_DATA(rest)
        self._SMTP__inbody = 1  # no empty line inserted before a first line without a colon

    def _messageHandled(self, resultList):
        script = self._upstream._script(self._transaction)
        scripted = script.data_reply
        if scripted is not None and scripted[0] >= 400:
            self.sendCode(scripted[0], scripted[1].encode())
            return
        _, data = resultList[0]  # every recipient's copy is the same; one is recorded
        tls = self.startedTLS or self._upstream._implicit_tls
        message = self._upstream._accept(self._transaction, data, tls)
        self._carried += 1
        if script.drop_after_data:
            self.transport.loseConnection()
            return
        code, text = scripted or (250, f"2.0.0 Ok: queued as {message.queue_id}")
        self.sendCode(code, text.encode())
        if script.hang_up_after:
            self.transport.loseConnection()


@implementer(smtp.IMessageDeliveryFactory)
@attrs.frozen
class _Deliveries:
    """One L{_Transaction} per MAIL FROM, for an anonymous or logged-in session."""

    upstream: FakeUpstream
    login: str

    def getMessageDelivery(self):
        return _Transaction(self.upstream, self.login)


@implementer(IRealm)
@attrs.frozen
class _Realm:
    upstream: FakeUpstream

    def requestAvatar(self, avatarId, mind, *interfaces):
        deliveries = _Deliveries(self.upstream, avatarId.decode())
        return smtp.IMessageDeliveryFactory, deliveries, lambda: None


@implementer(smtp.IMessageDelivery)
class _Transaction:
    def __init__(self, upstream, login):
        self.upstream = upstream
        self.login = login
        self.sender = None
        self.helo = None
        self.recipients = []

    def receivedHeader(self, helo, origin, recipients):
        return None  # record the content exactly as relayed, without a trace header

    def validateFrom(self, helo, origin):
        if self.upstream._portal is not None and self.login is None:
            raise smtp.SMTPServerError(530, "5.7.0 Authentication required")
        self.helo = helo[0].decode("ascii", "replace") if helo[0] else None
        self.sender = str(origin)
        refusal = self.upstream.sender_refusals.get(self.sender)
        if refusal is not None:
            raise smtp.SMTPServerError(*refusal)  # str text, as for SMTPBadRcpt
        return origin

    def validateTo(self, user):
        address = str(user.dest)
        refusal = self.upstream.rcpt_refusals.get(address)
        if refusal is not None:
            code, text = refusal
            raise smtp.SMTPBadRcpt(address, code, text)  # str text: Twisted encodes it here
        self.recipients.append(address)
        return self.upstream.collector


@implementer(smtp.IMessage)
class _Collector:
    def __init__(self):
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        return defer.succeed(b"".join(line + b"\r\n" for line in self.lines))

    def connectionLost(self):
        pass
