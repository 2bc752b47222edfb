# -*- test-case-name: tests.test_pool -*-
"""
One upstream connection that carries allowed messages, one after another
(docs/protocol.rst section 5, docs/design.rst "Upstream connections").

L{RelaySender} is Twisted's ESMTP sender (through L{UpstreamClient}) taken
over once the connection is ready for MAIL FROM.  Each message is one
L{KeptConnection.send}: a Deferred that fires as soon as the upstream has
decided it (the reply to the final dot, or a refusal), so the client never
waits for QUIT; the connection goes back to its L{smtpproxy.pool.Pool}.

What may be tried again is decided here: only a message that nothing
could have reached.  A connection that was kept idle and turns out dead
(or closing, C{421}) before the upstream accepted MAIL FROM fails the
message with L{Stale}, and the pool sends it on a new connection; once
MAIL FROM was accepted, a failure is final, so no message goes twice.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from smtpproxy import replies
from smtpproxy.capabilities import Capabilities
from smtpproxy.parameters import DSN_MAIL, DSN_RCPT, for_upstream, xclient_command
from smtpproxy.upstream import UpstreamClient

log = Logger(namespace="smtpproxy.upstream")

CLOSING = 421
"""The upstream's "closing the connection": never reuse a connection that said it."""


class Stale(Exception):
    """
    A kept connection failed before the upstream accepted MAIL FROM:
    nothing was delivered, the message may go on a new connection.  Its
    text is the failure's, for the debug line that says so.
    """

    def __init__(self, failure):
        super().__init__(failure.getErrorMessage())


class KeptConnection(UpstreamClient):
    """
    An upstream connection that carries messages one after another and
    waits, idle, in its L{smtpproxy.pool.Pool} between them: the
    bookkeeping of one message at a time (L{send}, L{_decide}, L{_fail}),
    of being idle (L{idle}, L{quit}) and of how the connection ends.
    L{RelaySender} does the SMTP transaction itself.

    @ivar messages: how many messages this connection was given.
    @ivar reusable: whether it may carry another message: not after an
        error, a timeout, a C{421} or a withdrawn message.
    """

    messages = 0
    reusable = True
    _message = None
    _envelope = None
    _accepted = False
    _reused = False
    _idle = False

    def ready(self):
        """
        The connection is set up (TLS and AUTH as configured): tell the
        real client first if asked (XCLIENT), then send the message this
        connection was opened for.
        """
        factory = self.factory
        if factory.xclient is not None and self.capabilities.offers("XCLIENT"):
            self._tell_client(factory.xclient)
            return
        (envelope, delivered), factory.first = factory.first, None
        self.send(envelope).chainDeferred(delivered)

    def send(self, envelope):
        """
        Send one L{smtpproxy.pool.Envelope}: a Deferred firing with the
        deciding C{(code, text)}, or failing (with L{Stale} if it may be
        sent again on another connection).
        """
        self._message = message = Deferred()
        self._envelope = envelope
        self._reused = self.messages > 0
        self._accepted = False
        self._idle = False
        self.messages += 1
        self.setTimeout(self.timeout)
        self._start()
        return message

    def _start(self):
        """Subclasses send the message in C{self._envelope} here."""
        raise NotImplementedError

    def _decide(self, code, resp):
        """
        The message is decided: the pool takes the connection back first,
        so whatever the message's Deferred starts can use it at once.  The
        envelope goes too: an idle connection holds no message data.
        """
        message, self._message = self._message, None
        self._envelope = None
        if message is not None:
            self.factory.pool.release(self)
            message.callback((code, resp))

    def _fail(self, failure):
        """
        The message failed: as L{Stale} if nothing could have reached
        anybody on a kept connection, so the pool tries a new one.
        """
        message, self._message = self._message, None
        if message is not None:
            if self._reused and not self._accepted:
                failure = Failure(Stale(failure))
            message.errback(failure)

    def idle(self, seconds):
        """
        Wait for the next message; any line the upstream sends meanwhile
        (a 421 before it closes) ends the connection, and so do C{seconds}
        without a message (L{timeoutConnection}).
        """
        self._idle = True
        self._expected = ()
        self._okresponse = self._failresponse = self._spokeWhileIdle
        self.setTimeout(seconds)

    def _spokeWhileIdle(self, code, resp):
        self.reusable = False
        self.factory.pool.lost(self)
        self.transport.loseConnection()

    def quit(self, timeout=None):
        """Say QUIT and close once it is answered (or C{timeout}, else the step timeout, passes)."""
        self._idle = False
        self.reusable = False
        if self.transport.disconnecting:
            return
        self.setTimeout(timeout or self.timeout)
        self._disconnectFromServer()

    def timeoutConnection(self):
        """Idle too long: QUIT politely; waiting for an answer: abort."""
        if self._idle:
            self.factory.pool.lost(self)
            self.quit()
            return
        self.reusable = False
        super().timeoutConnection()

    def sendError(self, exc):
        self.reusable = False
        super().sendError(exc)

    def connectionLost(self, reason):
        """
        A message still under way fails with the connection's first error
        (or the reason it ended); as L{Stale} if nothing could have been
        delivered on a kept connection.
        """
        self.reusable = False
        self.factory.pool.lost(self)
        self._fail(self._outcome if isinstance(self._outcome, Failure) else reason)
        super().connectionLost(reason)

    def _tell_client(self, client):
        """
        XCLIENT (C{--upstream_xclient}): the upstream takes the real client
        for the connection's, answers with a new greeting, and wants EHLO
        again; then the message goes as usual.  A refusal means the
        upstream does not trust the proxy for it: the message waits (451)
        and the log says why, rather than go as if from the proxy.
        Such a connection carries only this client's message.
        """
        self.factory.xclient = None
        self.reusable = False
        self._expected = [220]
        self._okresponse = self._greetedAgain
        self._failresponse = self._xclientRefused
        self.sendLine(xclient_command(client, self.capabilities.xclient).encode("ascii"))

    def _greetedAgain(self, code, resp):
        self._expected = [250]
        self._okresponse = self._helloAgain
        self._failresponse = self._xclientRefused
        self.sendLine(b"EHLO " + self.factory.domain)

    def _helloAgain(self, code, resp):
        self.capabilities = Capabilities.from_ehlo(resp)
        self.ready()

    def _xclientRefused(self, code, resp):
        self.sendError(smtp.SMTPProtocolError(code, b"XCLIENT refused: " + resp))


class RelaySender(KeptConnection):
    """
    Send messages, each all or nothing, and report the reply that decided
    each: the Deferred of L{send} fires with C{(code, text)} of the DATA
    reply or of a 4xx/5xx refusal, or fails if the upstream could not be
    used.
    """

    _open = False

    def _start(self):
        """RSET first if the last transaction was left open (a refusal before the data)."""
        if self._open:
            self._command(b"RSET", self._reset)
        else:
            self._transaction()

    def _command(self, line, handler):
        self._expected = range(1000)
        self._okresponse = self._failresponse = handler
        self.sendLine(line)

    def _reset(self, code, resp):
        """RSET answered: anything but 250 means the connection is not fit for a message."""
        if code != 250:
            self.reusable = False
            self._fail(Failure(smtp.SMTPProtocolError(code, b"RSET refused: " + resp)))
            self.quit()
            return
        self._open = False
        self._transaction()

    def _transaction(self):
        """
        Send MAIL FROM and every RCPT, in one write where the upstream
        offers PIPELINING (RFC 2920), else one at a time.  DATA waits for
        every answer either way: it goes only if all recipients were
        accepted.

        Addresses go exactly as given (C{<>} for the null sender): the
        stock C{smtp.Address} and C{quoteaddr} reject valid addresses such
        as C{user@[192.0.2.1]}.  The client's parameters follow as sent,
        each where the upstream offers its extension (L{for_upstream});
        the rest is left out with a warning (DSN's: RFC 3461 section 4.2),
        except C{SMTPUTF8}: such a message waits (4xx) rather than go as
        plain mail.
        """
        commands = self._envelope_commands()
        if commands is None:
            self._decide(replies.NO_SMTPUTF8.code, replies.NO_SMTPUTF8.encode())
            return
        self._answers = []
        if self.capabilities.offers("PIPELINING"):
            self._unsent = []
            self.transport.write(b"".join(line + b"\r\n" for line in commands))
        else:
            self._unsent = commands[1:]
            self.sendLine(commands[0])
        self._total = len(commands)
        self._expected = range(1000)
        self._okresponse = self._failresponse = self._answered

    def _envelope_commands(self):
        """MAIL FROM and the RCPTs as lines, or C{None} if SMTPUTF8 is needed and not offered."""
        envelope = self._envelope
        offered = self.capabilities.keywords
        keep_auth = self.factory.username is not None
        mail, dropped = for_upstream(envelope.mail_parameters, offered, keep_auth)
        commands = [b"MAIL FROM:<" + envelope.sender.encode("utf-8") + b">"
                    + mail.encode("ascii")]
        for recipient, parameters in zip(envelope.recipients, envelope.rcpt_parameters):
            suffix, lost = for_upstream(parameters, offered)
            commands.append(b"RCPT TO:<" + recipient.encode("utf-8") + b">"
                            + suffix.encode("ascii"))
            dropped += lost
        if "SMTPUTF8" in dropped:
            log.warn("upstream does not offer SMTPUTF8 now: a message with UTF-8 addresses waits")
            return None
        lost = sorted(set(dropped) & (DSN_MAIL | DSN_RCPT))
        if lost:
            log.warn("upstream does not offer DSN now: relaying without {keywords}",
                     keywords=", ".join(lost))
        return commands

    def _answered(self, code, resp):
        """
        One answer to MAIL FROM or a RCPT.  A refused MAIL FROM decides at
        once when nothing else was sent; pipelined, the RCPTs' answers
        (C{503}s) are awaited first, so the connection stays in step.
        """
        self._answers.append((code, resp))
        first = len(self._answers) == 1
        if first and code == 250:
            self._accepted = self._open = True
        if code == CLOSING:
            self._closing(code, resp)
        elif first and code != 250 and self._unsent:
            self._refused(code, resp)
        elif self._unsent:
            self.sendLine(self._unsent.pop(0))
        elif len(self._answers) == self._total:
            self._envelope_done()

    def _envelope_done(self):
        """
        Every answer is in: DATA only if the upstream accepted the sender
        and every recipient (docs/protocol.rst section 5).  The stock code
        sends DATA when any recipient was accepted and reports the
        refusals as success.  Of several refusals, a permanent one wins.
        """
        (code, resp), *recipients = self._answers
        if code != 250:
            self._refused(code, resp)
            return
        refusals = [(c, r) for c, r in recipients if c not in smtp.SUCCESS]
        if refusals:
            self._refused(*max(refusals, key=lambda refusal: refusal[0] >= 500))
        else:
            self._command(b"DATA", self._dataAnswered)

    def _dataAnswered(self, code, resp):
        if code != 354:
            self._refused(code, resp)
            return
        self.smtpState_data(code, resp)
        self._okresponse = self._failresponse = self._replyDuringData

    def getMailData(self):
        return self._envelope.data

    def _refused(self, code, resp):
        """
        Relay only a real refusal.  The stock code takes any unexpected
        reply for the outcome, so a C{250} answering DATA would count as
        delivered though no data was sent.
        """
        if 400 <= code < 600:
            self._decide(code, resp)
        else:
            self.sendError(smtp.SMTPProtocolError(code, resp, self.log.str()))

    def _closing(self, code, resp):
        """
        C{421}: the upstream is closing.  Before it accepted MAIL FROM on a
        kept connection, the message goes again on a new one; otherwise
        the client hears the 421's temporary refusal.
        """
        self.reusable = False
        self.transport.loseConnection()
        if self._reused and not self._accepted:
            self._fail(Failure(smtp.SMTPClientError(code, resp)))
        else:
            self._decide(code, resp)

    def _replyDuringData(self, code, resp):
        """A reply before the end of data: the upstream is broken; drop it (451)."""
        self.reusable = False
        self._fail(Failure(smtp.SMTPProtocolError(code, b"reply before the end of data: " + resp)))
        self.transport.abortConnection()

    def transformChunk(self, chunk):
        """
        Send the data unchanged: it is already in wire form.  The stock
        transform converts LF to CRLF and stuffs dots chunk by chunk,
        missing a dot at the start of the data or of a chunk (fight D).

        A message withdrawn meanwhile (its client was cut off, see
        L{smtpproxy.transaction.Message.withdraw}) ends here, before its
        final dot: the connection is dropped and nothing more is sent.
        """
        self.resetTimeout()
        if getattr(self._envelope.data, "withdrawn", False):
            self.reusable = False
            self._fail(Failure(smtp.SMTPClientError(-1, b"message withdrawn")))
            self.transport.abortConnection()
        return chunk

    def finishedFileTransfer(self, lastsent):
        """
        End the data (it is empty or ends with CRLF, so only C{.} CRLF
        follows); from now on the reply is the message's outcome.
        """
        self._okresponse = self._failresponse = self._dotAnswered
        self.sendLine(b".")

    def _dotAnswered(self, code, resp):
        if code == CLOSING:
            self._closing(code, resp)
        elif code in smtp.SUCCESS:
            self._open = False
            self._decide(code, resp)
        else:
            self._open = False
            self._refused(code, resp)
