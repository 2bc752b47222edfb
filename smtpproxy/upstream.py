# -*- test-case-name: tests.test_upstream -*-
"""
Talking to the upstream SMTP server: setting up a connection, and turning
a failure to use it into the client's reply (docs/protocol.rst section 5).

Twisted's C{smtp.ESMTPSenderFactory} does the connection, EHLO (with HELO
fallback), STARTTLS, AUTH and the reply parsing; L{UpstreamClient} fixes the
connection steps whose stock behaviour is wrong for a proxy
(docs/twisted.rst section 5), and its subclasses take over once the
connection is ready for MAIL FROM: L{smtpproxy.relay.RelaySender} for
messages, L{smtpproxy.verify} for recipient checks, L{Probe} for what the
upstream offers, so all talk to the upstream the same way.
TLS is all or nothing: in a TLS mode a message goes only over a
connection whose certificate was verified, never in clear.
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
    debug = False
    """
    No transcript of each line in C{self.log}: Twisted keeps one for its
    error messages, which the proxy never shows (a transcript holds the
    AUTH exchange), and it costs two appends per command.
    """
    __setattr__ = object.__setattr__
    """
    Plain attribute assignment: C{ESMTPClient.__setattr__} only adds a
    deprecation warning for C{tlsMode}, at the cost of a Python call for
    every attribute the sender sets (several per command).
    """
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
        the global one that C{TimeoutMixin} imports (tests use a clock).
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
