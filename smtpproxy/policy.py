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
from http.cookiejar import CookieJar

from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.compat import nativeString
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from smtpproxy import descriptors
from smtpproxy.answer import Decision, parse_answer
from smtpproxy.login import LoginVerdict, parse_login_answer
from smtpproxy.tls import load_trust_root

MAX_ANSWER = 1024 * 1024


class _Pool(HTTPConnectionPool):
    """
    The persistent pool toward the API.  It keeps as many idle connections
    as requests may run at once (L{smtpproxy.config.Policy.connections})
    instead of Twisted's 2: with many messages in flight, most API calls
    would otherwise open (and close) a connection of their own, which the
    benchmark measured at about 10 % of the proxy's CPU per message.  An
    idle connection is closed after C{Policy.idle_timeout} instead of
    Twisted's 240 s, before the API's own keep-alive timeout closes it under
    a request.
    """

    def __init__(self, reactor, policy):
        super().__init__(reactor, persistent=True)
        self.maxPersistentPerHost = policy.connections
        self.cachedConnectionTimeout = policy.idle_timeout


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Where the agent connects for one request, as Twisted's own C{Agent} does
    it (TCP, with TLS for https), but quiet: Twisted logs "Starting factory"
    at info for every new connection, a line per message under load that
    says nothing.

    @ivar connected: whether the request needed a new connection; if not,
        the pool gave it one it had kept (which the API may have closed).
    """

    connected = False

    def __init__(self, reactor, tls):
        self._reactor = reactor
        self._tls = tls

    def endpointForURI(self, uri):
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        endpoint = HostnameEndpoint(self._reactor, nativeString(uri.host), uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return _QuietEndpoint(self, endpoint)


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """Connects with the agent's protocol factory made quiet (C{noisy = False})."""

    def __init__(self, endpoints, endpoint):
        self._endpoints = endpoints
        self._endpoint = endpoint

    def connect(self, protocolFactory):
        self._endpoints.connected = True
        protocolFactory.noisy = False
        return self._endpoint.connect(protocolFactory)


def _never_read(failure):
    """
    Whether a POST that failed on a kept connection is worth sending again:
    the API closed the connection before a byte of its answer, and nobody
    cancelled the request.  That is the case of an API that closed an idle
    connection as the request went out, so it never read it.  Twisted
    retries such failures itself only for idempotent requests without a
    body; a POST is neither.  (An API that read the request, then closed
    without a byte of answer, sees it again; a policy check has no effect an
    answer did not report.)  A TLS error is no close: another try would fail
    the same way.
    """
    if not failure.check(RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived):
        return False
    return all(reason.check(ConnectionDone, ConnectionLost)
               for reason in getattr(failure.value, "reasons", ()))


@implementer(IBodyProducer)
class _Body:
    """
    A request body written in one go: treq's own producer for bytes goes
    through a cooperator, a reactor turn more per API call.
    """

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

    @param http: a treq C{HTTPClient} to use instead of the pooled one
        (C{treq.testing.StubTreq} in unit tests).
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
            self._tls = BrowserLikePolicyForHTTPS(_trust_root(policy.ca_path))
            self._cookies = CookieJar()
        self._http = http

    def check(self, request: dict) -> Deferred:
        """
        POST C{request} (from L{smtpproxy.answer.build_request}) and fire
        with the L{Decision}; never errback, except with C{CancelledError}
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
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        if self._pool is None:
            return _post(self._http, url, body).addCallback(self._answered, parse)
        return self._attempt(url, body).addCallback(self._answered, parse)

    def _attempt(self, url, body):
        endpoints = _Endpoints(self._reactor, self._tls)
        d = _post(self._client(endpoints), url, body)
        return d.addErrback(self._again, endpoints, url, body)

    def _again(self, failure, endpoints, url, body):
        """
        Send a POST the API never read (L{_never_read}) again.  The pool has
        dropped the connection that failed, so the tries end on a new
        connection at the latest: a failure there is final.
        """
        if endpoints.connected or not _never_read(failure):
            return failure
        return self._attempt(url, body)

    def _client(self, endpoints):
        """
        A treq client for one request, so that L{_Endpoints.connected} tells
        about that request alone; the pool and cookies are shared.
        """
        agent = Agent.usingEndpointFactory(self._reactor, endpoints, self._pool)
        return HTTPClient(agent, cookiejar=self._cookies, data_to_body_producer=_Body)

    def _answered(self, response, parse):
        reader = _AnswerReader()
        response.deliverBody(reader)
        return reader.done.addCallback(lambda body: parse(response.code, body))

    def close(self) -> Deferred:
        """Close the pooled connections (at shutdown and in tests)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()


def _post(http, url, body):
    return http.post(
        url,
        data=body,
        headers={"Content-Type": "application/json"},
        allow_redirects=False,
        unbuffered=True,
    )


class _AnswerReader(Protocol):
    """
    Reads the answer body, at most L{MAX_ANSWER} bytes.  Unlike
    C{treq.collect}, cancelling C{done} (the deadline, the caller) closes the
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
