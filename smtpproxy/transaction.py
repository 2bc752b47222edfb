# -*- test-case-name: tests.test_transaction,tests.test_session -*-
"""
One mail transaction, from MAIL FROM to the reply after the final dot.

L{Transaction} is the proxy's C{IMessageDelivery} (the session's own
command loop calls it where Twisted's would): it collects the envelope.
L{Message} receives the data: it splits off the header block,
asks the policy API as soon as that block is complete (while the body may
still be arriving), spools the body to a temporary file past a small
in-memory threshold, and after the final dot either refuses or delivers
upstream.  Its L{Message.eomReceived} always fires with the L{Reply} the
client must hear; it never fails, so no cause can turn into Twisted's
generic "550 Could not send e-mail".

Both are given what they work with, as L{Services}: the data path calls
forward into the policy client and the delivery and never back into the
factory or the session that made them.
"""

import io
import tempfile
from collections.abc import Callable

import attrs
from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

from smtpproxy import replies
from smtpproxy.answer import build_request
from smtpproxy.headers import HeaderReader, HeaderTooLarge
from smtpproxy.outcome import message_line, outcome, verdict
from smtpproxy.parameters import present

log = Logger(namespace="smtpproxy.message")


@attrs.frozen
class Services:
    """
    What every transaction and message works with: built once by the
    factory, shared by all of them.

    @ivar clock: the C{IReactorTime} that times the API and the message.
    @ivar limits: the L{smtpproxy.config.Limits} (message and header sizes,
        spool memory).
    @ivar policy: the L{smtpproxy.policy.PolicyClient}: C{check(request)}
        is a Deferred firing with a L{smtpproxy.answer.Decision}.
    @ivar deliver: relays an allowed message:
        C{deliver(sender, recipients, data, mail_parameters,
        rcpt_parameters, client=...)} is a Deferred firing with the
        client's L{replies.Reply}, never failing.
    @ivar recipient_check: C{recipient_check(sender, mail_parameters)}, a
        L{smtpproxy.verify.RecipientCheck} (C{--verify_recipients}).
    @ivar metrics: the L{smtpproxy.metrics.Metrics} messages are counted in.
    @ivar header_budget: the L{smtpproxy.headers.Budget} all header blocks
        share.
    @ivar header_memory_full: called with the client's address when that
        budget refuses a message, for the summary line.
    """

    clock: object
    limits: object
    policy: object
    deliver: Callable
    recipient_check: Callable
    metrics: object
    header_budget: object
    header_memory_full: Callable


@implementer(smtp.IMessageDelivery)
class Transaction:
    """
    The envelope of one message.

    Addresses arrive as strings already checked by L{smtpproxy.commands},
    which is stricter than Twisted's C{Address}.

    @ivar services: the L{Services} it and its message work with.
    @ivar login: the client's L{smtpproxy.auth.Login}.
    @ivar client: the client's IP address (or a UNIX socket's name).
    @ivar helo: the client's EHLO/HELO argument.
    @ivar mail_parameters: MAIL FROM's L{smtpproxy.parameters.Parameter}s,
        shown to the API and passed on to the upstream where it offers them.
    @ivar rcpt_parameters: each recipient's RCPT parameters, in the order
        of C{recipients}.
    @ivar origin: the real client as XCLIENT tells the upstream
        (L{smtpproxy.parameters.xclient_command}), or C{None}.
    @ivar connection: the session's number, as the smtplog shows it, so a
        message's log line leads to its dialogue.
    @ivar tls: the negotiated TLS version and cipher
        (C{"TLSv1.3/TLS_AES_128_GCM_SHA256"}), or C{None}.
    """

    def __init__(self, services, login, client, helo, connection=None, tls=None):
        self.services = services
        self.login = login
        self.client = client
        self.helo = helo
        self.connection = connection
        self.tls = tls
        self.sender = None
        self.mail_parameters = ()
        self.origin = None
        self.recipients = []
        self.rcpt_parameters = []
        self._check = None

    def receivedHeader(self, helo, origin, recipients):
        """The proxy adds no trace header: the upstream does (docs/protocol.rst section 4)."""
        return None

    def validateFrom(self, helo, origin):
        self.sender = origin
        return origin

    def validateTo(self, user, parameters=()):
        self.recipients.append(user)
        self.rcpt_parameters.append(parameters)
        return self.begin

    def begin(self):
        """The one L{Message} for all recipients (docs/twisted.rst fight B)."""
        return Message(self, self.services)

    @property
    def smtputf8(self):
        """Whether MAIL FROM had SMTPUTF8: addresses may be UTF-8 (RFC 6531)."""
        return present(self.mail_parameters, "SMTPUTF8")

    def verify(self, recipient, parameters=()):
        """
        Ask the upstream about C{recipient} (C{--verify_recipients}); it
        joins the envelope only if accepted.  A Deferred firing with the
        client's reply; it never fails.
        """
        if self._check is None:
            self._check = self.services.recipient_check(self.sender, self.mail_parameters)
        return self._check.ask(recipient, parameters).addCallback(
            self._verified, recipient, parameters)

    def _verified(self, reply, recipient, parameters):
        if reply == replies.RECIPIENT_OK:
            self.validateTo(recipient, parameters)
        return reply

    def end(self):
        """
        The envelope is complete or abandoned: close the upstream connection
        the recipient checks used, if any.
        """
        if self._check is not None:
            self._check.close()
            self._check = None


class Message:
    """
    The data of one transaction, in wire form (see L{smtpproxy.framing}).

    @ivar transaction: the L{Transaction}: the envelope, read only.
    @ivar size: the bytes received so far (counting stops at a refusal).
    """

    def __init__(self, transaction, services):
        self.transaction = transaction
        self._services = services
        self._limits = services.limits
        self._clock = services.clock
        self._started = self._clock.seconds()
        self._headers = HeaderReader(self._limits.max_header_size)
        self._budget = services.header_budget
        self._held = 0
        self._block = None
        self._spool = tempfile.SpooledTemporaryFile(max_size=self._limits.spool_memory)
        self.size = 0
        self._refusal = None
        self._decision = None
        self._policy = "-"
        self._api_time = None
        self._upstream_data = None
        self._withdrawn = False
        self.auth_id = None

    def dataReceived(self, data):
        """Take the next piece of the message."""
        if self._refusal is not None:
            return
        self.size += len(data)
        if self.size > self._limits.max_message_size:
            self.refuse(replies.MESSAGE_TOO_BIG)
            return
        if self._block is None:
            if not self._budget.take(self._held, len(data)):
                self._services.header_memory_full(self.transaction.client)
                self.refuse(replies.HEADER_MEMORY)
                return
            self._held += len(data)
            try:
                data = self._headers.feed(data)
            except HeaderTooLarge:
                self.refuse(replies.HEADER_TOO_BIG)
                return
            if data is None:
                return
            self._ask(self._headers.block, separated=data.startswith(b"\r"))
        try:
            self._spool.write(data)
        except OSError as e:
            t = self.transaction
            log.warn(
                "cannot spool a message: {error} (conn={conn} client={client}); "
                "it gets {reply}, the client will retry",
                error=e.strerror or e, conn=t.connection, client=t.client,
                reply=replies.LOCAL_ERROR.code,
            )
            self.refuse(replies.LOCAL_ERROR)

    def refuse(self, reply):
        """Give up on this message: C{reply} is the answer to the final dot."""
        if self._refusal is None:
            self._refusal = reply
            self._drop()

    def _ask(self, block, separated):
        """
        Start the policy call: the header block is complete.

        @param separated: the block ended at an empty line, or the message
            ended with it.  If not (the message went on with a line that is
            no header field, even a continuation line), an empty line is put
            between the headers and that line upstream: without it, the
            upstream could read as headers lines the API saw as body, such
            as a C{From:} behind a leading continuation line.
        """
        self._block = block
        self._separator = b"" if separated else b"\r\n"
        t = self.transaction
        request = build_request(
            t.login, t.sender, t.recipients, block.for_api(), t.client, t.helo,
            t.mail_parameters, t.rcpt_parameters,
        )
        asked = self._clock.seconds()
        self._policy = "pending"
        self._decision = self._services.policy.check(request).addCallback(self._answered, asked)

    def _answered(self, decision, asked):
        """Time the API when it answers, not when the message ends."""
        self._api_time = self._clock.seconds() - asked
        self.auth_id = decision.auth_id
        self._policy = verdict(decision)
        self._services.metrics.api_latency.observe(self._api_time)
        return decision

    def eomReceived(self):
        """The final dot arrived: a Deferred firing with the client's reply."""
        if self._refusal is not None:
            done = succeed(self._refusal)
        else:
            if self._block is None:
                self._ask(self._headers.finish(), separated=True)
            done = self._decision.addCallback(self._decided)
        done.addErrback(self._crashed)
        return done.addCallback(self._finished)

    def _decided(self, decision):
        if self._withdrawn:
            return replies.SHUTTING_DOWN
        if not decision.allowed:
            return decision.reply
        self._spool.seek(0)
        head = self._block.rewrite(decision.headers) + self._separator
        data = self._upstream_data = _Concatenation(head, self._spool)
        t = self.transaction
        sender = t.sender if decision.sender is None else decision.sender
        return self._services.deliver(sender, t.recipients, data, t.mail_parameters,
                                      t.rcpt_parameters, client=t.origin)

    def _crashed(self, failure):
        log.failure("message handling failed", failure)
        return replies.LOCAL_ERROR

    def _finished(self, reply):
        self._release()
        self._spool.close()
        metrics = self._services.metrics
        result = outcome(reply, self._policy)
        metrics.messages.labels(result).inc()
        metrics.message_size.observe(self.size)
        fields = self._fields()
        api = "-" if self._api_time is None else f"{self._api_time * 1000:.0f}ms"
        log.info("{line}", line=message_line(result, fields, api, self.auth_id, reply),
                 result=result, api=api, code=reply.code, text=reply.text,
                 auth_id=self.auth_id, **fields)
        return reply

    def connectionLost(self):
        """
        The client went away before its final dot: the one line and the
        metric for this message say so (as Postfix's "lost connection after
        DATA"), with how far it got and what the API had said by then.
        """
        result = outcome(None)
        self._services.metrics.messages.labels(result).inc()
        log.info(
            "message {result} conn={conn} client={client} user={user!r} from=<{sender}> "
            "rcpts={count} after={size} policy={policy} tls={tls} time={time:.0f}ms",
            result=result, **self._fields(),
        )
        self._drop()

    def _fields(self):
        """What both kinds of a message's line tell."""
        t = self.transaction
        return dict(
            conn=t.connection,
            client=t.client,
            user=t.login.username,
            sender=t.sender,
            count=len(t.recipients),
            size=self.size,
            policy=self._policy,
            tls=t.tls or "-",
            time=(self._clock.seconds() - self._started) * 1000,
        )

    @property
    def committed(self):
        """
        Whether the upstream may have the whole message (its final dot was
        sent): from then on only the upstream's reply or its timeout may end
        the delivery, or the message could arrive while the client retries.
        """
        return self._upstream_data is not None and self._upstream_data.exhausted

    def withdraw(self):
        """
        Give up on a message that is not L{committed}: a delivery under way
        stops before the final dot, and one the API has yet to allow never
        starts, so the client, which never hears an outcome, can send it
        again without a duplicate.
        """
        self._withdrawn = True
        if self._upstream_data is not None:
            self._upstream_data.withdrawn = True

    def _drop(self):
        """The message will not be relayed: stop the API call, free the spool."""
        if self._decision is not None:
            self._decision.addErrback(lambda failure: None)
            self._decision.cancel()
        self._release()
        self._spool.close()

    def _release(self):
        """The header data this message held no longer counts (L{Budget})."""
        self._budget.give(self._held)
        self._held = 0


class _Concatenation:
    """
    A read-only file of a byte string followed by a file: what goes upstream.

    The upstream sender ends the data with the final dot as soon as a read
    comes back empty, so C{exhausted} says whether the upstream may have
    the whole message.  Once C{withdrawn}, reads never come back empty:
    the sender drops the connection at its next chunk
    (L{smtpproxy.relay.RelaySender.transformChunk}), so that dot is
    never sent.
    """

    def __init__(self, head, rest):
        self._head = io.BytesIO(head)
        self._rest = rest
        self.exhausted = False
        self.withdrawn = False

    def read(self, size=-1):
        if self.withdrawn:
            return b"\r\n"
        if size < 0:
            chunk = self._head.read() + self._rest.read()
        else:
            chunk = self._head.read(size) or self._rest.read(size)
        self.exhausted = not chunk
        return chunk

