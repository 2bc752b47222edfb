# -*- test-case-name: tests.test_verify -*-
"""
Recipients judged at RCPT time (C{--verify_recipients}).

Without it the client hears C{250} for every RCPT and the upstream judges
the recipients only after the final dot, all or nothing: one unknown
address fails the whole message, and a relaying client bounces every
copy.  With it, each RCPT is put to the upstream while the client is
still in its envelope, and a refusal reaches the client at once, with the
upstream's code and text, for that address alone.  The message itself
still goes upstream only after the final dot and the policy API's allow,
on its own connection (L{smtpproxy.pool.Pool.deliver}); nothing is ever
sent as DATA on a checking connection.

One checking connection per client transaction (L{RecipientCheck}),
opened at the first RCPT that needs an answer: MAIL FROM once with the
client's sender, one RCPT per client RCPT, QUIT when the transaction ends
(DATA, RSET, a new EHLO, STARTTLS or the client gone; QUIT abandons the
upstream transaction as RSET would).  So a message with 50 recipients
costs one upstream connection, not 50, and open checking connections are
bounded by the client connections.  The session waits for each verdict
before it reads on, so a connection has one question open at a time, and
the upstream's own limits apply as to any client: its C{452} "too many
recipients" is relayed as the 4xx it is, and the client sends those
recipients again in a later transaction.

Each step (connect, every reply) waits at most C{--upstream_timeout}.
An upstream that cannot be asked (refused, timed out, TLS or login
failure, C{421}, an answer that is no verdict) gives C{451 4.4.1} for
that RCPT and every later one of the transaction, which then costs no
more waiting; the next transaction tries again.  A sender the upstream
refuses is that refusal for each RCPT: the message would meet it after
the final dot anyway.

Definite verdicts (accepted, or refused with a 5xx) are kept for
C{--verify_cache_time} seconds per (sender, recipient) in a
L{VerdictCache} of at most L{CACHE_SIZE} entries, so a client sending to
the same people again does not cost the upstream a question each time.
A 4xx is never kept: it is meant to change.
"""

from collections import OrderedDict

from twisted.internet import defer
from twisted.mail import smtp

from smtpproxy import replies, upstream
from smtpproxy.parameters import for_upstream

CACHE_SIZE = 10000
"""Verdicts a L{VerdictCache} keeps at most; beyond that the oldest goes."""


class VerdictCache:
    """
    Recent definite verdicts, bounded in number and in age.  Every entry
    lives equally long, so insertion order is also expiry order.
    """

    def __init__(self, clock, lifetime, size=CACHE_SIZE):
        self._clock = clock
        self._lifetime = lifetime
        self._size = size
        self._entries = OrderedDict()

    def get(self, key):
        """The L{replies.Reply} kept for C{key}, or C{None}."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        reply, expires = entry
        if expires <= self._clock.seconds():
            del self._entries[key]
            return None
        return reply

    def put(self, key, reply):
        if self._lifetime <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (reply, self._clock.seconds() + self._lifetime)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class RecipientCheck:
    """
    The upstream's verdicts on one client transaction's recipients.

    @ivar closed: the transaction is over; a connection still being set
        up quits instead of sending MAIL FROM.
    """

    def __init__(self, services, sender, mail_parameters=()):
        """
        @param services: the factory: C{reactor}, C{config} (upstream and
            hostname), C{verdicts}, the shared L{VerdictCache}, and
            C{capabilities}, which learns what the upstream offers.
        @param sender: the client's envelope sender (C{""} for C{<>}).
        @param mail_parameters: the client's MAIL parameters, sent along
            where the upstream offers them, as for the delivery.
        """
        self._services = services
        self._sender = sender
        self._mail_parameters = mail_parameters
        self._recipient = None
        self._parameters = ()
        self._asked = None
        self._client = None
        self._connected = False  # a connection is open, or being opened
        self._verdict = None  # the answer to every later question, once there is one
        self.closed = False

    def ask(self, recipient, parameters=()):
        """
        A Deferred firing with the client's reply to C{RCPT TO:<recipient>}:
        L{replies.RECIPIENT_OK}, the upstream's refusal, or
        L{replies.UPSTREAM_UNAVAILABLE}.  It never fails; cancelling it
        only drops the question.  Ask again only once it has fired.
        """
        cached = self._services.verdicts.get((self._sender, recipient))
        if cached is not None:
            return defer.succeed(cached)
        if self._verdict is not None:
            return defer.succeed(self._verdict)
        self._recipient = recipient
        self._parameters = parameters
        self._asked = defer.Deferred(lambda _: self._forget())
        if self._client is not None:
            self._client.ask(recipient, parameters)
        elif not self._connected:
            self._connect()
        return self._asked

    def close(self):
        """The transaction is over: no more questions, QUIT."""
        self.closed = True
        self._asked = None
        if self._client is not None:
            self._client.quit()

    def _connect(self):
        self._connected = True
        services = self._services
        ended = upstream.connect(
            services.reactor, services.config.upstream, services.config.hostname,
            CheckingClient, self._sender, check=self,
            mail_parameters=self._mail_parameters, learn=services.capabilities.learn,
        )
        ended.addErrback(self._ended)

    def ready(self, client):
        """C{client}'s MAIL FROM was accepted: it can take questions."""
        self._client = client
        if self.closed:
            client.quit()
        elif self._asked is not None:
            client.ask(self._recipient, self._parameters)

    def answered(self, code, resp):
        """
        The upstream's verdict on the last recipient asked about: relay
        it, and keep a definite one (even if the question was dropped).
        """
        reply = replies.RECIPIENT_OK if code in smtp.SUCCESS else upstream.refusal(code, resp)
        if code in smtp.SUCCESS or code >= 500:
            self._services.verdicts.put((self._sender, self._recipient), reply)
        self._answer(reply)

    def sender_refused(self, code, resp):
        """MAIL FROM was refused: that is the answer to every question."""
        self._verdict = upstream.refusal(code, resp)
        self._answer(self._verdict)

    def _ended(self, failure):
        """
        The connection is gone (always a failure: a check has no outcome
        of its own).  Gone while idle, it is opened again when asked; gone
        with a question open, the upstream cannot be asked (logged once).
        """
        self._client = None
        self._connected = False
        if self._asked is not None:
            self._verdict = upstream.unavailable(failure, self._services.config.upstream)
            self._answer(self._verdict)

    def _answer(self, reply):
        asked, self._asked = self._asked, None
        if asked is not None:
            asked.callback(reply)

    def _forget(self):
        self._asked = None


class CheckingClient(upstream.UpstreamClient):
    """
    Put recipients to the upstream, never a message: once the connection
    is ready, MAIL FROM, then one RCPT per question of the factory's
    L{RecipientCheck} (C{factory.check}), QUIT when it closes.  No timer
    runs while the connection waits for the next question.
    """

    def ready(self):
        if self.factory.check.closed:
            self.quit()
            return
        self._expected = smtp.SUCCESS
        self._okresponse = self._mailAccepted
        self._failresponse = self._mailRefused
        mail, _ = for_upstream(self.factory.mail_parameters, self.capabilities.keywords)
        self.sendLine(b"MAIL FROM:<" + self.factory.fromEmail + b">" + mail.encode("ascii"))

    def _mailAccepted(self, code, resp):
        self.setTimeout(None)
        self.factory.check.ready(self)

    def _mailRefused(self, code, resp):
        if self._refuses(code, resp):
            self.factory.check.sender_refused(code, resp)
            self.quit()

    def ask(self, recipient, parameters):
        self.setTimeout(self.timeout)
        self._expected = smtp.SUCCESS
        self._okresponse = self._answered
        self._failresponse = self._rcptRefused
        suffix, _ = for_upstream(parameters, self.capabilities.keywords)
        self.sendLine(b"RCPT TO:<" + recipient.encode("utf-8") + b">" + suffix.encode("ascii"))

    def _answered(self, code, resp):
        self.setTimeout(None)
        self.factory.check.answered(code, resp)

    def _rcptRefused(self, code, resp):
        if self._refuses(code, resp):
            self._answered(code, resp)

    def _refuses(self, code, resp):
        """
        Whether a reply is a refusal to relay; anything else (C{421}: the
        upstream is going away; no 4xx or 5xx at all) is an error that
        ends the connection, and the question is answered C{451}.
        """
        if 400 <= code < 600 and code != 421:
            return True
        self.sendError(smtp.SMTPProtocolError(code, resp))
        return False

    def quit(self):
        """QUIT, with the timer on: a silent upstream is cut off."""
        self.setTimeout(self.timeout)
        self._disconnectFromServer()
