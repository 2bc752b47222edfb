# -*- test-case-name: tests.test_session -*-
"""
The client side: one L{ProxySession} per connection.

It is Twisted's C{smtp.ESMTP} with the command loop replaced, because the
stock one executes plaintext pipelined behind STARTTLS, offers AUTH without
TLS, falls out of DATA on a long line and forces the final reply to 250 or
550 (docs/twisted.rst fights A, C, E, F).  What is kept from Twisted: the
greeting, the TLS context and STARTTLS capability check, the EHLO extension
listing, reply formatting and the idle timer.

Four concerns live in mixins of their own modules: the input pulling and
flow control (L{smtpproxy.flow}), the mail transaction
(L{smtpproxy.mailcommands}), the AUTH exchange (L{smtpproxy.authexchange})
and the transcript (L{smtpproxy.transcript}).  This module has the other
commands, the session's state and its connection events.  The client's HELO/EHLO name is the session's own C{helo_name}:
Twisted's C{_helo} belongs to its command loop, which is not used.

Timeouts (each a L{Limits} field): C{pretls_timeout} runs from connect to
the first command inside TLS and is not reset by input, so dribbling bytes
cannot hold a slot before TLS; C{idle_timeout} then runs per command;
C{data_timeout} runs from the last bytes received in DATA; while a reply
is pending no timer runs at all.  Once the last reply (421, 221) is sent,
the connection is closed within L{CLOSE_GRACE} seconds whatever the client
does.
"""

import ipaddress

from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.mail import smtp
from zope.interface import implementer

from smtpproxy import replies
from smtpproxy.authexchange import AuthExchange
from smtpproxy.commands import parse_command
from smtpproxy.flow import InputFlow
from smtpproxy.mailcommands import MailCommands
from smtpproxy.framing import Framer
from smtpproxy.parameters import Offer
from smtpproxy.tls import handshake_error, negotiated
from smtpproxy.transcript import Transcript

NEEDS_TLS = frozenset({"AUTH", "MAIL", "RCPT", "DATA"})

CLOSE_GRACE = 2
"""
Seconds a session that has said its last word waits for the client to take
it and close too (a TLS close_notify in answer to ours, a TCP FIN) before it
cuts the connection off.  Nothing the client can still send matters then, so
this is no limit on clients; it keeps a client that never closes from holding
its slot, or a drain with nothing in flight from waiting for it.
"""


@implementer(IPushProducer, IHandshakeListener)
class ProxySession(InputFlow, MailCommands, AuthExchange, Transcript, smtp.ESMTP):
    """
    One client connection.

    @ivar factory: the L{smtpproxy.server.ProxyFactory} with the config and
        the shared services.
    @ivar number: this connection's id in the logs.
    @ivar client: the client's address (host), what connection limits count.
    """

    noisy = False

    def __init__(self, factory, number):
        super().__init__(contextFactory=factory.config.tls)
        self.factory = factory
        self.number = number
        self.limits = factory.config.limits
        self.host = factory.config.hostname
        self.timeout = self.limits.pretls_timeout
        self._transcript = factory.config.transcript
        self._framer = Framer(self.limits.max_line_length, self.limits.bare_lf == "normalize")
        self.client = None
        self.helo_name = None
        self._held = False
        self._awaiting = None
        self._pulling = False
        self._blocked = False
        self._handshaking = False
        self._producing = False
        self._closing = False
        self._login = None
        self._offer = Offer()
        self._offer_extended = False
        self._auth = None
        self._transaction = None
        self._message = None
        self._pending = None
        self._tls = None

    # Output.

    def greeting(self):
        return self.host + b" ESMTP smtpproxy"

    def reply(self, reply):
        self.sendCode(reply.code, reply.encode())

    def extensions(self):
        """
        Offer AUTH only inside TLS and STARTTLS only outside it; DSN and
        SMTPUTF8 as L{_upstream_offer} says; SIZE no larger than the
        upstream's.
        """
        ext = {}
        if not self.startedTLS and self.canStartTLS:
            ext[b"STARTTLS"] = None
        ext[b"PIPELINING"] = None
        ext[b"8BITMIME"] = None
        ext[b"SIZE"] = [b"%d" % self._size_limit()]
        ext[b"ENHANCEDSTATUSCODES"] = None
        if self._offer.dsn:
            ext[b"DSN"] = None
        if self._offer.smtputf8:
            ext[b"SMTPUTF8"] = None
        if self.startedTLS:
            ext[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        return ext

    def _upstream_offer(self):
        """
        DSN and SMTPUTF8 are offered (inside TLS, where mail is taken) only
        while the upstream offers them: the proxy cannot carry them further.
        """
        capabilities = self.factory.capabilities.current
        if capabilities is None or not self.startedTLS:
            return Offer()
        return Offer(dsn=capabilities.offers("DSN"), smtputf8=capabilities.offers("SMTPUTF8"))

    def _size_limit(self):
        """C{--max_message_size}, or the upstream's SIZE where that is smaller."""
        own = self.limits.max_message_size
        capabilities = self.factory.capabilities.current
        return own if capabilities is None else capabilities.size_limit(own)

    def _command(self, line):
        command = parse_command(line)
        handler = getattr(self, "smtp_" + command.verb, None) if command.verb else None
        self._log_command(line, command, handler)
        if handler is None:
            self.reply(replies.UNKNOWN_COMMAND)
        elif command.verb in NEEDS_TLS and not self.startedTLS:
            self.reply(replies.MUST_STARTTLS)
        else:
            handler(command.argument)

    def handshakeCompleted(self):
        self._handshaking = False
        self._tls = negotiated(self.transport)
        if self._tls is not None:
            self._log_input(f"[TLS {self._tls}]")
        self._reading()

    # Commands (docs/protocol.rst section 1).

    def smtp_EHLO(self, argument):
        if self._greet(argument):
            self._offer_extended = True
            self._offer = self._upstream_offer()
            self.sendCode(250, self.host + b" Hello\n" + self.listExtensions())

    def smtp_HELO(self, argument):
        if self._greet(argument):
            self.sendCode(250, self.host + b" Hello")

    def _greet(self, argument):
        """Record the client's name and drop any transaction; refuse a missing name."""
        if not argument:
            self.reply(replies.DOMAIN_REQUIRED)
            return False
        self.helo_name = argument
        self._offer = Offer()
        self._offer_extended = False
        self._end_transaction()
        return True

    def smtp_STARTTLS(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        elif self.startedTLS:
            self.reply(replies.ALREADY_TLS)
        elif not self.canStartTLS:
            self.reply(replies.TLS_UNAVAILABLE)
        else:
            self.reply(replies.SERVICE_READY_TLS)
            self._framer.discard()
            self.helo_name = None
            self._offer = Offer()
            self._login = None
            self._end_transaction()
            self._handshaking = True
            self.transport.startTLS(self.ctx)
            self.startedTLS = True

    def smtp_NOOP(self, argument):
        self.reply(replies.NOOP_OK)

    def smtp_VRFY(self, argument):
        self.reply(replies.VRFY)

    def smtp_HELP(self, argument):
        self.reply(replies.HELP)

    def smtp_QUIT(self, argument):
        self.reply(replies.BYE)
        self._close()

    # Connection events.

    def connectionMade(self):
        """
        Admit or refuse the client, then greet.  A refused client that
        does not take its 421 (over implicit TLS it waits for a handshake
        the client may never make) is cut off after C{pretls_timeout}.
        Nagle's algorithm is off: a reply can otherwise wait ~40 ms behind
        TLS session tickets.
        """
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self.client = _host(self.transport.getPeer())
        self._log_input(f"[connection from {self.client}]")
        refusal = self.factory.connected(self)
        if refusal is not None:
            self._closing = True
            self.reply(refusal)
            self.transport.loseConnection()
            self.setTimeout(self.limits.pretls_timeout)
            return
        self.transport.registerProducer(self, True)
        self._producing = True
        self.startedTLS = self._handshaking = ISSLTransport.providedBy(self.transport)
        super().connectionMade()

    def shut_down(self):
        """
        The proxy is stopping (docs/protocol.rst section 6: transactions in flight are
        finished).  A client in the middle of DATA may send the rest, and
        it and a client waiting for its message's outcome get that outcome
        first (L{smtpproxy.flow.InputFlow._resume} comes back here); the drain timeout cuts
        off one that takes too long, which was never told 250, so nothing
        is lost.  Any other client gets C{421 4.3.2} now and is closed.
        """
        if not (self.delivering or self._closing):
            self.reply(replies.SHUTTING_DOWN)
            self._close()

    def cut_off(self):
        """
        The drain is over: drop the connection without a reply, and the
        message waiting for its outcome with it, which stops before its
        final dot goes upstream (the client will send it again).
        """
        if self._pending is not None:
            self._pending.withdraw()
        self.transport.abortConnection()

    def _close(self):
        """
        Close after the last reply.  The producer goes first (a transport
        with one registered never closes), reading resumes so a TLS layer
        can finish its handshake or shutdown, and input is ignored from now
        on.  Twisted's TLS layer closes the socket only when the client
        answers our close_notify, so a client that does not is cut off
        after L{CLOSE_GRACE} seconds, as is one that does not read that
        last reply.
        """
        self._closing = True
        self.factory.finished(self)
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.resumeProducing()
        self.transport.loseConnection()
        self.setTimeout(CLOSE_GRACE)

    def timeoutConnection(self):
        if self._closing:
            self.transport.abortConnection()
        else:
            self.reply(replies.TIMEOUT)
            self._close()

    def connectionLost(self, reason):
        self._closing = True
        self.factory.disconnected(self)
        failed = handshake_error(reason) if self._handshaking else None
        if failed is not None:
            self.factory.handshake_failed(self.client, failed)
        self._log_disconnect(failed)
        if self._message is not None:
            self._message.connectionLost()
            self._message = None
        if self._awaiting is not None:
            awaiting, self._awaiting = self._awaiting, None
            awaiting.addErrback(lambda failure: None)
            awaiting.cancel()
        self._end_transaction()
        super().connectionLost(reason)



def _host(address):
    """
    The host part of a peer address, as limits, logs and the API see it: an
    IPv4 client of a dual-stack socket as C{192.0.2.1}, not
    C{::ffff:192.0.2.1}; a UNIX socket's peers share one key.
    """
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return host if mapped is None else str(mapped)

