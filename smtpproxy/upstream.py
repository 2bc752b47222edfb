# -*- test-case-name: tests.test_upstream -*-
"""
Deliver one allowed message to the upstream SMTP server and turn what
happened into the client's final reply (docs/protocol.rst section 5).

Twisted's L{smtp.ESMTPSenderFactory} does the connection, EHLO (with HELO
fallback), STARTTLS, AUTH and the reply parsing; L{UpstreamClient} fixes the
connection steps whose stock behaviour is wrong for a proxy, and
L{RelaySender} the steps of a delivery (docs/twisted.rst section 5).
L{connect} and L{UpstreamClient} also serve the recipient checks of
L{smtpproxy.verify}, so both talk to the upstream the same way.
TLS is all or nothing too: in a TLS mode the message goes only over a
connection whose certificate was verified, never in clear.  The message
is kept in wire form (CRLF line ends, dot-stuffed as the client sent it,
never containing CRLF.CRLF), so it is sent byte for byte.
"""

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger, LogLevel
from twisted.mail import smtp
from twisted.python.failure import Failure

from smtpproxy import descriptors, replies
from smtpproxy.capabilities import Capabilities
from smtpproxy.parameters import DSN_MAIL, DSN_RCPT, for_upstream, xclient_command

log = Logger(namespace="smtpproxy.upstream")

_TLS_FAILED = (SSL.Error, VerificationError)
_LOGIN_FAILED = (smtp.AUTHRequiredError, smtp.AUTHDeclinedError, smtp.AuthenticationError)


class UpstreamClient(smtp.ESMTPSender):
    """
    The connection steps every conversation with the upstream shares:
    Twisted's EHLO (HELO fallback), STARTTLS and AUTH, with the fixes a
    proxy needs; subclasses take over at C{smtpState_from}, once the
    connection is ready for MAIL FROM.

    The outcome is kept until the connection is closed and only then given
    to the factory's Deferred, so the Deferred fires exactly once, after
    the last byte was exchanged: with C{_outcome} if a subclass set one,
    else with the first error, else with the reason the connection ended.
    """

    _outcome = None
    capabilities = Capabilities()
    """What the upstream's last EHLO offered (nothing after a HELO fallback)."""

    def connectionMade(self):
        """
        Turn Nagle's algorithm off: the final dot follows the last data
        chunk as a small separate write, and with Nagle on it waits for the
        upstream's delayed ACK, about 40 ms per message.
        """
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def callLater(self, period, func):
        """
        Run the per-step timeout on the reactor given to L{deliver}, not on
        the global one that L{TimeoutMixin} imports (tests use a clock).
        """
        return self.factory.reactor.callLater(period, func)

    def timeoutConnection(self):
        """
        Report the timeout, then abort: a silent upstream may also have
        stopped reading, and the stock C{loseConnection} would wait for it.
        """
        super().timeoutConnection()
        self.transport.abortConnection()

    def smtpState_helo(self, code, resp):
        """
        Give up if HELO is refused too: the stock code keeps C{smtpState_helo}
        as HELO's own failure handler and would send HELO forever.
        """
        super().smtpState_helo(code, resp)
        self._failresponse = self.smtpConnectionFailed

    def esmtpState_serverConfig(self, code, resp):
        """
        Note what the upstream offers; after STARTTLS the second EHLO's
        answer replaces the first, as it should.
        """
        self.capabilities = Capabilities.from_ehlo(resp)
        super().esmtpState_serverConfig(code, resp)

    def smtpState_from(self, code, resp):
        """
        The connection is ready for MAIL FROM: tell the factory's C{learn}
        (if any) what the upstream offers, then let the subclass go on.
        """
        learn = getattr(self.factory, "learn", None)
        if learn is not None:
            learn(self.capabilities)
        self.ready()

    def ready(self):
        """Subclasses start their own conversation here."""
        raise NotImplementedError

    def sendError(self, exc):
        """
        Keep the first error for L{connectionLost} and close (QUIT or drop),
        never reconnect.  The stock code fires the factory's Deferred here,
        which fails if the outcome was already reported.
        """
        if self._outcome is None:
            self._outcome = Failure(exc)
        smtp.SMTPClient.sendError(self, exc)

    def connectionLost(self, reason):
        """
        Report the outcome, or the reason the connection ended without one
        (a drop after the final dot included).  Marking the send finished
        keeps the factory from reporting (or retrying) again.
        """
        super().connectionLost(reason)
        outcome = self._outcome or reason
        self.factory.sendFinished = True
        if isinstance(outcome, Failure):
            self.factory.result.errback(outcome)
        else:
            self.factory.result.callback(outcome)


class RelaySender(UpstreamClient):
    """
    Send one message, all or nothing, and report the reply that decided it:
    the factory's Deferred fires with C{(code, text)} of the deciding reply
    (the DATA reply, or a 4xx/5xx refusal), or a failure that means the
    upstream could not be used.
    """

    def ready(self):
        """
        Send the sender exactly as given (C{<>} for the null sender): the
        stock code parses it with L{smtp.Address}, which rejects valid
        addresses such as C{user@[192.0.2.1]}.  The client's parameters
        follow as it sent them, each where the upstream offers its
        extension (L{for_upstream}); what it does not offer now is left
        out with a warning (DSN's; RFC 3461 section 4.2 then has the relay
        itself answer for the notifications), except C{SMTPUTF8}: a message
        with UTF-8 addresses is not sent as plain mail, the client gets a
        4xx and tries again later.
        """
        factory = self.factory
        if factory.xclient is not None and self.capabilities.offers("XCLIENT"):
            self._tell_client(factory.xclient)
            return
        offered = self.capabilities.keywords
        keep_auth = factory.username is not None
        mail, dropped = for_upstream(factory.mail_parameters, offered, keep_auth)
        self._rcpt_suffixes = []
        for parameters in factory.rcpt_parameters:
            suffix, lost = for_upstream(parameters, offered)
            self._rcpt_suffixes.append(suffix.encode("ascii"))
            dropped += lost
        if "SMTPUTF8" in dropped:
            log.warn("upstream does not offer SMTPUTF8 now: a message with UTF-8 addresses waits")
            self._outcome = (replies.NO_SMTPUTF8.code, replies.NO_SMTPUTF8.encode())
            self._disconnectFromServer()
            return
        lost = sorted(set(dropped) & (DSN_MAIL | DSN_RCPT))
        if lost:
            log.warn("upstream does not offer DSN now: relaying without {keywords}",
                     keywords=", ".join(lost))
        self._rcpt_suffixes = iter(self._rcpt_suffixes)
        self._expected = [250]
        self._okresponse = self.smtpState_to
        self._failresponse = self.smtpTransferFailed
        self.sendLine(b"MAIL FROM:<" + factory.fromEmail + b">" + mail.encode("ascii"))

    def _tell_client(self, client):
        """
        XCLIENT (C{--upstream_xclient}): the upstream takes the real client
        for the connection's, answers with a new greeting, and wants EHLO
        again; then the message goes as usual.  A refusal means the
        upstream does not trust the proxy for it: the message waits (451)
        and the log says why, rather than go as if from the proxy.
        """
        self.factory.xclient = None
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

    def smtpState_toOrData(self, code, resp):
        """
        Send every RCPT, then DATA only if the upstream accepted them all
        (docs/protocol.rst section 5).  The stock code sends DATA when any recipient
        was accepted and reports the refusals as success.

        Recipients are written as given, for the reason in
        L{smtpState_from} (the stock C{quoteaddr} is a header parser).
        """
        if self.lastAddress is not None:
            self.toAddressesResult.append((self.lastAddress, code, resp))
        self.lastAddress = next(self.toAddresses, None)
        if self.lastAddress is not None:
            self.sendLine(b"RCPT TO:<" + self.lastAddress + b">" + next(self._rcpt_suffixes))
            return
        refusals = [(c, r) for _, c, r in self.toAddressesResult if c not in smtp.SUCCESS]
        if refusals:
            permanentFirst = max(refusals, key=lambda refusal: refusal[0] >= 500)
            self.smtpTransferFailed(*permanentFirst)
        else:
            self._expected = [354]
            self._okresponse = self.smtpState_data
            self.sendLine(b"DATA")

    def smtpTransferFailed(self, code, resp):
        """
        Relay only a real refusal.  The stock code takes any unexpected
        reply for the outcome, so a C{250} answering DATA would count as
        delivered though no data was sent.
        """
        if 400 <= code < 600:
            self.smtpState_msgSent(code, resp)
        else:
            self.sendError(smtp.SMTPProtocolError(code, resp, self.log.str()))

    def smtpState_msgSent(self, code, resp):
        """
        Keep the deciding reply with its text, which the stock C{sentMail}
        drops (fight G), and QUIT: one message per connection, and the stock
        RSET would be sent again and again if the upstream refused it.
        """
        self._outcome = (code, resp)
        self._disconnectFromServer()

    def smtpState_data(self, code, resp):
        """
        Send the data, and take no reply until its final dot is out.  The
        stock code would take a reply that comes during the data for the
        outcome, tell the client 250 for a message whose end never went,
        and write QUIT into the middle of its body.
        """
        super().smtpState_data(code, resp)
        self._okresponse = self._failresponse = self._replyDuringData

    def _replyDuringData(self, code, resp):
        """A reply before the end of data: the upstream is broken; drop it (451)."""
        self._outcome = Failure(
            smtp.SMTPProtocolError(code, b"reply before the end of data: " + resp))
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
        if getattr(self.factory.file, "withdrawn", False):
            self._outcome = Failure(smtp.SMTPClientError(-1, b"message withdrawn"))
            self.transport.abortConnection()
        return chunk

    def finishedFileTransfer(self, lastsent):
        """
        End the data (it is empty or ends with CRLF, so only C{.} CRLF
        follows); from now on the reply is the message's outcome.
        """
        self._okresponse = self.smtpState_msgSent
        self._failresponse = self.smtpTransferFailed
        self.sendLine(b".")


class Probe(UpstreamClient):
    """Learn what the upstream offers (EHLO, after TLS and AUTH as configured), then QUIT."""

    def ready(self):
        self._outcome = self.capabilities
        self._disconnectFromServer()


def probe(reactor, upstream, hostname, logged=True):
    """
    A Deferred firing with the upstream's L{Capabilities}; a failure is
    passed on, and logged (L{unavailable}) if C{logged}.
    """
    probed = defer.maybeDeferred(connect, reactor, upstream, hostname, Probe, "")

    def failed(failure):
        unavailable(failure, upstream)
        return failure

    return probed.addErrback(failed) if logged else probed


def deliver(reactor, upstream, hostname, sender, recipients, data, mail_parameters=(),
            rcpt_parameters=None, learn=None, exhausted=None, client=None):
    """
    Send one message to the upstream and say what to answer the client.

    @param upstream: the L{smtpproxy.config.Upstream} to use.
    @param hostname: the name to give in EHLO/HELO.
    @param sender: the envelope sender; C{""} is the null sender C{<>}.
    @param recipients: the envelope recipients, in order.
    @param data: a binary file positioned at the message's start, in wire
        form (see the module docstring); only C{read(n)} is used.
    @param mail_parameters: the client's MAIL L{smtpproxy.parameters.Parameter}s.
    @param rcpt_parameters: for each recipient, its RCPT parameters.
    @param learn: called with the upstream's L{Capabilities} once the
        connection is ready for MAIL FROM.
    @param exhausted: see L{unavailable}.
    @param client: the real client's XCLIENT attributes
        (L{smtpproxy.parameters.xclient_command}), sent where the upstream
        offers XCLIENT and C{upstream.xclient} is on.

    @return: a Deferred that fires, exactly once and never with a failure,
        with the client's L{replies.Reply}.
    """
    outcome = defer.maybeDeferred(
        connect, reactor, upstream, hostname, RelaySender, sender,
        recipients=recipients, data=data, mail_parameters=mail_parameters,
        rcpt_parameters=rcpt_parameters or [()] * len(recipients), learn=learn,
        xclient=client if upstream.xclient else None,
    )
    return outcome.addCallback(_reply).addErrback(unavailable, upstream, exhausted)


def connect(reactor, upstream, hostname, protocol, sender, recipients=(), data=None,
            **attributes):
    """
    Start a connection to the upstream; return the Deferred that
    C{protocol} (an L{UpstreamClient}) fires when the connection ends.

    Keyword arguments only: ESMTPSenderFactory's order is a trap.  No
    retries, as a retry after the final dot can duplicate the message.
    C{reactor.connectTCP} (or C{connectSSL}), not an endpoint: with an
    endpoint the factory's Deferred never fires on a refused or dropped
    connection (fight H).

    C{requireTransportSecurity} makes a missing or refused STARTTLS fail the
    delivery instead of carrying on in clear.  With C{tls="none"} there is
    no context and no C{hostname}, so the stock sender stays plain (given a
    hostname, it upgrades whenever STARTTLS is offered).  Credentials, once
    configured, must be used: an upstream that offers no AUTH fails too.

    @param sender: the envelope sender, sent as given (C{""} is C{<>}).
    @param attributes: set on the factory, for C{protocol} to read.
    """
    result = defer.Deferred()
    factory = smtp.ESMTPSenderFactory(
        username=_encoded(upstream.username),
        password=_encoded(upstream.password),
        fromEmail="",
        toEmail=[recipient.encode("utf-8") for recipient in recipients],
        file=data,
        deferred=result,
        retries=0,
        timeout=upstream.timeout,
        contextFactory=upstream.client_tls,
        heloFallback=True,
        requireAuthentication=upstream.username is not None,
        requireTransportSecurity=upstream.tls != "none",
    )
    # The factory parses fromEmail with smtp.Address; the protocols send it raw.
    factory.fromEmail = sender.encode("utf-8")
    for name, value in attributes.items():
        setattr(factory, name, value)
    factory.protocol = protocol
    factory.domain = hostname.encode("idna")
    factory.noisy = False
    factory.reactor = reactor
    if upstream.tls == "tls":
        reactor.connectSSL(
            upstream.host,
            upstream.port,
            factory,
            upstream.client_tls,
            timeout=upstream.connect_timeout,
        )
    else:
        reactor.connectTCP(
            upstream.host, upstream.port, factory, timeout=upstream.connect_timeout
        )
    return result


def _encoded(text):
    return None if text is None else text.encode("utf-8")


def _reply(outcome):
    """The client's reply for the upstream's deciding reply (docs/protocol.rst section 5)."""
    code, resp = outcome
    if code in smtp.SUCCESS:
        return replies.relayed(250, "2.0.0", resp.decode("utf-8", "replace"))
    return refusal(code, resp)


def refusal(code, resp):
    """
    The client's reply for an upstream refusal (4xx or 5xx): the same
    code, the upstream's text made safe, an enhanced code if it has none.
    """
    return replies.relayed(code, f"{code // 100}.0.0", resp.decode("utf-8", "replace"))


def unavailable(failure, upstream, exhausted=None):
    """
    Any failure to use the upstream is temporary for the client (never a
    5xx: the client must retry); the cause goes to the log, once.

    A refused login is logged as an error: the proxy's own credentials are
    wrong or unusable, and every message waits until the operator acts.
    The client still hears only 451 4.4.1: its own login was fine.  The
    cause is taken from the reply, never from the error's transcript
    (C{error.log}), which holds the AUTH exchange.

    A connection that could not be made for want of a file descriptor is
    told to C{exhausted} instead, if given, which sums such failures up
    (they come in floods).
    """
    if exhausted is not None and descriptors.exhausted(failure):
        exhausted(f"upstream {upstream.host}:{upstream.port}")
        return replies.UPSTREAM_UNAVAILABLE
    error = failure.value
    if isinstance(error, smtp.SMTPClientError):
        cause = error.resp.decode("utf-8", "replace")
        if error.code > 0:
            cause = f"{error.code} {cause}"
    else:
        cause = failure.getErrorMessage()
    if failure.check(*_TLS_FAILED):
        cause = f"TLS handshake failed: {cause}"
    if failure.check(*_LOGIN_FAILED):
        level, problem = LogLevel.error, "did not accept the proxy's login"
    else:
        level, problem = LogLevel.warn, "unavailable"
    log.emit(
        level,
        "upstream {host}:{port} {problem}: {cause}",
        host=upstream.host,
        port=upstream.port,
        problem=problem,
        cause=replies.sanitise(cause),
    )
    return replies.UPSTREAM_UNAVAILABLE
