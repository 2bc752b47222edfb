# -*- test-case-name: tests.test_pool -*-
"""
Upstream connections kept for the next message (docs/design.rst
"Upstream connections").

Setting up a connection (connect, greeting, EHLO, STARTTLS, AUTH, EHLO
again) costs several round trips and most of the CPU of a small
message; a connection kept after its message starts the next one at
MAIL FROM.  L{Pool.deliver} takes the most recently used idle connection
(the likeliest to be alive) or opens a new one; after its message the
connection goes back (L{Pool.release}) unless it is unfit (an error, a
timeout, a C{421}), has carried C{pool_messages} messages, the pool
already holds C{pool_idle} idle ones, or the proxy is stopping.  An idle
connection is closed with QUIT after C{pool_timeout} seconds.

A message never goes twice: a kept connection that fails before the
upstream accepted MAIL FROM (L{smtpproxy.relay.Stale}) is replaced by a
new one for the same message, once; any later failure is the message's
outcome (docs/protocol.rst section 5).
"""

from attrs import field, frozen
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp

from smtpproxy import replies
from smtpproxy.relay import RelaySender, Stale
from smtpproxy.upstream import connect, refusal, unavailable

log = Logger(namespace="smtpproxy.upstream")

QUIT_TIMEOUT = 5
"""Seconds a stopping proxy waits for the upstream to answer each QUIT."""


@frozen
class Envelope:
    """
    One allowed message as it goes upstream.

    @ivar sender: the envelope sender; C{""} is the null sender C{<>}.
    @ivar recipients: the envelope recipients, in order.
    @ivar data: a binary file positioned at the message's start, in wire
        form (CRLF line ends, dot-stuffed, never containing CRLF.CRLF);
        only C{read(n)} is used.
    @ivar mail_parameters: the client's MAIL L{smtpproxy.parameters.Parameter}s.
    @ivar rcpt_parameters: for each recipient, its RCPT parameters.
    @ivar client: the real client's XCLIENT attributes
        (L{smtpproxy.parameters.xclient_command}), or C{None}.
    """

    sender: str
    recipients: tuple
    data: object = field(eq=False)
    mail_parameters: tuple
    rcpt_parameters: tuple
    client: object


class Pool:
    """
    The upstream connections of one proxy: see the module docstring.

    @param upstream: the L{smtpproxy.config.Upstream}, with the pool's limits.
    @param hostname: the name to give in EHLO/HELO.
    @param learn: called with the upstream's
        L{smtpproxy.capabilities.Capabilities} each time a new connection is
        ready for MAIL FROM.
    @param exhausted: see L{unavailable}.
    @param metrics: the L{smtpproxy.metrics.Metrics} to count connections in.
    """

    def __init__(self, reactor, upstream, hostname, learn=None, exhausted=None, metrics=None):
        self._reactor = reactor
        self._upstream = upstream
        self._hostname = hostname
        self._learn = learn
        self._exhausted = exhausted
        self._metrics = metrics
        self._idle = []
        self._closed = False

    def deliver(self, sender, recipients, data, mail_parameters=(), rcpt_parameters=None,
                client=None):
        """
        Send one message upstream and say what to answer the client: a
        Deferred that fires, exactly once and never with a failure, with
        the client's L{replies.Reply}.  See L{Envelope} for the arguments;
        C{client} is used only where C{upstream.xclient} is on.
        """
        envelope = Envelope(
            sender, tuple(recipients), data, tuple(mail_parameters),
            tuple(rcpt_parameters or [()] * len(recipients)),
            client if self._upstream.xclient else None)
        connection = self._take() if envelope.client is None else None
        if connection is None:
            sent = self._connect(envelope)
        else:
            sent = connection.send(envelope).addErrback(self._stale, envelope)
        return sent.addCallback(_reply).addErrback(unavailable, self._upstream, self._exhausted)

    def _take(self):
        """The most recently used idle connection, or C{None}."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.transport.disconnecting:
                self._count_idle()
                return connection
        self._count_idle()
        return None

    def _stale(self, failure, envelope):
        """A kept connection failed before MAIL FROM was accepted: a new one, once."""
        failure.trap(Stale)
        log.debug("kept upstream connection failed ({cause}); sending on a new one",
                  cause=failure.value)
        return self._connect(envelope)

    def _connect(self, envelope):
        """
        Open a connection for C{envelope}: a Deferred for its outcome.  If
        the connection fails before the message started (connect, TLS,
        AUTH), that failure is the message's.
        """
        delivered = defer.Deferred()
        ended = defer.maybeDeferred(
            connect, self._reactor, self._upstream, self._hostname, RelaySender, "",
            first=(envelope, delivered), pool=self, learn=self._learn,
            xclient=envelope.client,
        )
        if self._metrics is not None:
            self._metrics.upstream_connections.inc()
        ended.addErrback(self._connection_ended, delivered)
        return delivered

    def _connection_ended(self, failure, delivered):
        """
        The connection ended (a relay connection always reports a
        failure: its error or the reason it closed); if that was before
        its first message started, the failure is the message's.
        """
        if not delivered.called:
            delivered.errback(failure)

    def release(self, connection):
        """
        C{connection}'s message is decided: keep it for the next message,
        or QUIT it.
        """
        limits = self._upstream
        if (connection.reusable and not self._closed
                and connection.messages < limits.pool_messages
                and len(self._idle) < limits.pool_idle
                and not connection.transport.disconnecting):
            self._idle.append(connection)
            connection.idle(limits.pool_timeout)
            self._count_idle()
        else:
            connection.quit()

    def lost(self, connection):
        """C{connection} is closing or closed: never hand it out."""
        if connection in self._idle:
            self._idle.remove(connection)
            self._count_idle()

    def _count_idle(self):
        if self._metrics is not None:
            self._metrics.upstream_idle.set(len(self._idle))

    def close(self):
        """
        The proxy is stopping: QUIT the idle connections now, and each busy
        one once its message is decided (the drain waits for those
        messages, or has given up on them).  A Deferred that fires when
        the idle ones have ended, within L{QUIT_TIMEOUT} seconds.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        self._count_idle()
        for connection in idle:
            connection.quit(QUIT_TIMEOUT)
        return defer.DeferredList([connection.factory.result for connection in idle])


def _reply(outcome):
    """The client's reply for the upstream's deciding reply (docs/protocol.rst section 5)."""
    code, resp = outcome
    if code in smtp.SUCCESS:
        return replies.relayed(250, "2.0.0", resp.decode("utf-8", "replace"))
    return refusal(code, resp)
