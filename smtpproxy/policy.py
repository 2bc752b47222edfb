# -*- test-case-name: tests.test_policy -*-
"""
The policy API client: one POST per message (docs/protocol.rst section 3), the answer
judged by L{smtpproxy.answer}, and, with C{--auth_api}, one POST per login,
judged by L{smtpproxy.login}.

Both calls share one connection pool, TLS policy, CA bundle, deadline and
limit of exchanges at once: they go to the same kind of service, often the
same one, and a second pool would only double the idle connections.
Whatever goes wrong on the way (refused connection, TLS failure, timeout,
redirect, oversized or malformed answer) ends as the "unavailable" result
of that call (451 for a message, 454 for a login) and one warning naming
the cause, so the caller has exactly one thing to handle.  The request
body is never logged: it holds the client's password.
"""

import json

from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    _HTTP11ClientFactory,
    _RetryingHTTP11ClientProtocol,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from smtpproxy import descriptors
from smtpproxy.answer import Decision, parse_answer
from smtpproxy.login import LoginVerdict, parse_login_answer
from smtpproxy.tls import load_trust_root

MAX_ANSWER = 1024 * 1024


class _QuietConnectionFactory(_HTTP11ClientFactory):
    """Twisted logs "Starting factory" at info for every new API connection: noise."""

    noisy = False


class _Pool(HTTPConnectionPool):
    """
    The persistent pool toward the API, without per-connection log lines.
    It keeps as many idle connections as requests may run at once
    (L{smtpproxy.config.Policy.connections}) instead of Twisted's 2: with
    many messages in flight, most API calls would otherwise open (and
    close) a connection of their own, which the benchmark measured at about
    10 % of the proxy's CPU per message.  An idle connection is closed after
    C{Policy.idle_timeout} instead of Twisted's 240 s, before the API's own
    keep-alive timeout closes it under a request.

    A request that fails on a reused connection before any byte of answer
    is sent once more on a new one (L{_RetryOnce}).
    """

    _factory = _QuietConnectionFactory

    def __init__(self, reactor, policy):
        super().__init__(reactor, persistent=True)
        self.maxPersistentPerHost = policy.connections
        self.cachedConnectionTimeout = policy.idle_timeout

    def getConnection(self, key, endpoint):
        return super().getConnection(key, endpoint).addCallback(_retrying_once)


def _retrying_once(connection):
    """A reused connection (Twisted wraps those for its own retry) retries L{_Body}s too."""
    if isinstance(connection, _RetryingHTTP11ClientProtocol):
        return _RetryOnce(connection._clientProtocol, connection._newConnection)
    return connection


class _RetryOnce(_RetryingHTTP11ClientProtocol):
    """
    Twisted retries only idempotent requests without a body on a new
    connection; a POST is neither.  The policy POST is sent again when it
    failed on a reused connection before any byte of the answer came back
    and without being cancelled (Twisted's own conditions otherwise): the
    case of an API that closed the idle connection as the request went out,
    so it never read it.  One retry, on a new connection.  (An API that
    read the request, then closed without a byte of answer, sees it twice;
    a policy check has no effect an answer did not report.)
    """

    def _shouldRetry(self, method, exception, bodyProducer):
        return isinstance(bodyProducer, _Body) and super()._shouldRetry(b"GET", exception, None)


@implementer(IBodyProducer)
class _Body:
    """A request body that can be sent a second time (see L{_RetryOnce})."""

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


log = Logger(namespace="smtpproxy.policy")
_WRAPPERS = (RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed)


class AnswerTooLarge(Exception):
    """The API's answer body is over L{MAX_ANSWER} bytes."""


class QueueFull(Exception):
    """C{Policy.queue} requests already wait for a connection to the API."""


class PolicyClient:
    """
    Asks the policy API about messages (and logins) over one persistent
    connection pool.

    @param http: a treq L{HTTPClient} to use instead of the pooled one
        (L{treq.testing.StubTreq} in unit tests).
    @ivar exhausted: if set, called with C{"policy API"} or C{"login API"}
        instead of a warning line when a connection could not be made for
        want of a file descriptor (L{smtpproxy.descriptors}: such failures
        come in floods and are summed up).
    """

    exhausted = None

    def __init__(self, reactor, policy, http=None):
        self._reactor = reactor
        self._policy = policy
        self._pool = None
        self._slots = DeferredSemaphore(policy.connections)
        if http is None:
            self._pool = _Pool(reactor, policy)
            tls = BrowserLikePolicyForHTTPS(_trust_root(policy.ca_path))
            agent = Agent(reactor, contextFactory=tls, pool=self._pool)
            http = HTTPClient(agent, data_to_body_producer=_Body)
        self._http = http

    def check(self, request: dict) -> Deferred:
        """
        POST C{request} (from L{smtpproxy.answer.build_request}) and fire
        with the L{Decision}; never errback, except with L{CancelledError}
        after the caller cancels, which aborts the HTTP exchange (closing
        its connection, so the API can stop working on it) or takes the
        request out of the queue.

        At most C{Policy.connections} exchanges run at once; the next
        C{Policy.queue} wait for one to end, within the same deadline, and
        any more fail at once: an overloaded API gets no more work than it
        can answer in time.
        """
        return self._ask(self._policy.url, request, parse_answer, Decision.unavailable, "policy")

    def check_login(self, request: dict) -> Deferred:
        """
        POST C{request} (from L{smtpproxy.login.build_login_request}) to
        the login API and fire with the L{LoginVerdict}; as L{check}
        otherwise, in the same pool, queue and deadline.
        """
        return self._ask(
            self._policy.auth_url, request, parse_login_answer, LoginVerdict.unavailable, "login"
        )

    def _ask(self, url, request, parse, unavailable, name):
        """
        The exchange both calls make: C{parse(status, body)} judges the
        answer, C{unavailable(cause)} stands for any failure on the way.
        """
        if len(self._slots.waiting) >= self._policy.queue:
            exchange = maybeDeferred(_queue_full, self._policy.queue)
        else:
            exchange = self._slots.run(self._exchange, url, request, parse)
        exchange.addTimeout(self._policy.timeout, self._reactor,
                            onTimeoutCancel=_timed_out(unavailable))

        def cancel(outcome):
            # Fail the caller's Deferred first, so the aborted exchange's
            # error finds it already fired and is dropped unlogged.
            outcome.errback(CancelledError())
            exchange.cancel()

        outcome = Deferred(cancel)

        def settle(result):
            if outcome.called:
                return
            if isinstance(result, Failure):
                if self.exhausted is not None and descriptors.exhausted(result):
                    self.exhausted(f"{name} API")
                    outcome.callback(unavailable("no file descriptor free"))
                    return
                result = unavailable(_describe(result))
            if result.cause is not None:
                log.warn("{name} API unavailable: {cause}", name=name, cause=result.cause)
            outcome.callback(result)

        exchange.addBoth(settle)
        return outcome

    def _exchange(self, url, request, parse):
        d = self._http.post(
            url,
            data=json.dumps(request, ensure_ascii=False).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
            unbuffered=True,
        )
        return d.addCallback(self._answered, parse)

    def _answered(self, response, parse):
        reader = _AnswerReader()
        response.deliverBody(reader)
        return reader.done.addCallback(lambda body: parse(response.code, body))

    def close(self) -> Deferred:
        """Close the pooled connections (at shutdown and in tests)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()


class _AnswerReader(Protocol):
    """
    Reads the answer body, at most L{MAX_ANSWER} bytes.  Unlike
    L{treq.collect}, cancelling C{done} (the deadline, the caller) closes the
    connection, so an API that stalls mid-body cannot keep a socket.
    """

    def __init__(self):
        self._body = bytearray()
        self.done = Deferred(lambda _: self.transport.loseConnection())

    def dataReceived(self, data):
        if self.done.called:
            return
        self._body += data
        if len(self._body) > MAX_ANSWER:
            self.transport.loseConnection()
            self.done.errback(AnswerTooLarge(f"answer over {MAX_ANSWER} bytes"))

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self._body))
        else:
            self.done.errback(reason)


def _trust_root(ca_path):
    """
    The certificates in the PEM file C{ca_path} (a bundle may hold several),
    or the platform's trust store when there is none.  Read once, at start-up,
    so a missing or broken file stops the proxy instead of every message.
    """
    return None if ca_path is None else load_trust_root(ca_path)


def _queue_full(size):
    raise QueueFull(f"{size} requests already waiting for a connection (--api_queue)")


def _timed_out(unavailable):
    """
    The whole exchange took too long: that is the cause, whatever the
    cancelled request failed with.
    """
    return lambda result, timeout: unavailable(f"no answer within {timeout} seconds")


def _describe(failure):
    """
    A one-line cause for the log.  Twisted's HTTP client wraps the real
    errors (refused, TLS verification, cancelled) in lists of failures.
    """
    if isinstance(failure.value, _WRAPPERS):
        return "; ".join(_describe(reason) for reason in failure.value.reasons)
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"
