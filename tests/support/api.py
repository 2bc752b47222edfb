"""
A fake policy API (docs/protocol.rst sections 3 and 4) on a real twisted.web server over loopback.

End-to-end tests need to see exactly what the proxy asked and to choose the answer, including
an answer that comes late or never (timeouts, a client hanging up mid-check) without sleeping:
``answer`` may return a Deferred the test fires when it wants.  ``close()`` also ends what a
well-behaved test never sees finish (the proxy's keep-alive connection, an answer still held),
so the reactor is clean afterwards.
"""

import json

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smtpproxy.answer import build_request
from smtpproxy.auth import Login
from tests.support.loopback import listen_loopback

PATH = "/policy"

_log = Logger()


@attrs.frozen
class ApiRequest:
    """
    One request as the API received it.

    ``headers`` maps lower-case names to values (repeats joined with ", ");
    ``json`` is the parsed body, or None when the body is not JSON.
    """

    method: str
    path: str
    headers: dict
    body: bytes
    json: object


def start_api(reactor, answer, tls=None):
    """
    Serve the fake API on 127.0.0.1; over TLS when C{tls} (server C{CertificateOptions}) is given.

    C{answer(request_json)} returns a dict (sent as JSON with status 200), a
    C{(status, body_bytes)} tuple, or a Deferred of either.
    """
    return FakeApi(reactor, answer, tls)


class FakeApi:
    """
    @ivar url: where to POST, e.g. C{http://127.0.0.1:40123/policy}.
    @ivar requests: every L{ApiRequest}, in arrival order.
    @ivar answer: the answering callable; tests may replace it between messages.
    """

    def __init__(self, reactor, answer, tls):
        self.answer = answer
        self.requests = []
        self._pending = set()
        site = Site(_Endpoint(self), reactor=reactor)
        site.noisy = False
        factory = site if tls is None else TLSMemoryBIOFactory(tls, False, site)
        self._server = listen_loopback(reactor, factory)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.port}{PATH}"

    def wait_idle(self):
        """A Deferred that fires once no connection to the API is open."""
        return self._server.wait_idle()

    def close(self):
        """Cancel held answers, stop listening and drop every connection; a Deferred."""
        for pending in list(self._pending):
            self._cancel(pending)
        return self._server.close()

    def _cancel(self, pending):
        """
        Cancel each answer once, even when cancelling runs test code that re-enters (a
        canceller that fires a test's Deferred can end the test and run L{close} before
        C{cancel} returns).
        """
        if pending in self._pending:
            self._pending.discard(pending)
            pending.cancel()

    def _receive(self, request):
        body = request.content.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        self.requests.append(
            ApiRequest(
                method=request.method.decode("latin-1"),
                path=request.uri.decode("latin-1"),
                headers={
                    name.decode("ascii").lower(): ", ".join(v.decode("latin-1") for v in values)
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=body,
                json=parsed,
            )
        )
        pending = defer.maybeDeferred(self.answer, parsed)
        self._pending.add(pending)
        pending.addBoth(self._settled, pending)
        request.notifyFinish().addErrback(lambda _: self._cancel(pending))
        pending.addCallback(_respond, request)
        pending.addErrback(_unanswered, request)

    def _settled(self, result, pending):
        self._pending.discard(pending)
        return result


class _Endpoint(Resource):
    """Answers every method on every path: what was asked is for the test to check."""

    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self._api = api

    def render(self, request):
        self._api._receive(request)
        return NOT_DONE_YET


def _respond(answer, request):
    if isinstance(answer, dict):
        status, body = 200, json.dumps(answer).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
    else:
        status, body = answer
    request.setResponseCode(status)
    request.write(body)
    request.finish()


def _unanswered(failure, request):
    """A cancelled answer (client gone, API closed) is normal; a crashing C{answer} is a test bug."""
    if failure.check(defer.CancelledError):
        return
    _log.failure("fake API answer failed", failure)
    request.setResponseCode(500)
    request.finish()


# For the policy client's own tests (tests/test_policy.py, tests/test_api_load.py): one
# request, one answer, and a resource that records what it got.

ALLOW = json.dumps(
    {"allow": True, "headers": [{"name": "X-Checked", "value": "yes"}], "from": "b@example.org"}
).encode()
REQUEST = build_request(
    Login("ann", "s3cret-pässword"),
    "a@example.com",
    ["x@example.net", "y@example.net"],
    [{"name": "Subject", "value": "héllo \ufffd"}, {"name": "X-Empty", "value": ""}],
    "192.0.2.1",
    "client.example",
)


@attrs.frozen
class Seen:
    """One request as the fake API received it."""

    method: bytes
    path: bytes
    content_type: list
    body: bytes


class ApiResource(Resource):
    """
    A policy API that records each request and answers C{code} and C{body}
    with C{headers}, or never answers when C{body} is C{None}.  A resource,
    so StubTreq serves it as well as a real Site (unlike
    L{FakeApi}, which is a whole server).

    @ivar arrived: fires with the first request.
    """

    isLeaf = True

    def __init__(self, code=200, body=ALLOW, headers=()):
        super().__init__()
        self.code, self.body, self.headers = code, body, headers
        self.seen = []
        self.arrived = defer.Deferred()

    def render(self, request):
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.requestHeaders.getRawHeaders(b"content-type"),
                request.content.read(),
            )
        )
        if not self.arrived.called:
            self.arrived.callback(request)
        if self.body is None:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        for name, value in self.headers:
            request.setHeader(name, value)
        return self.body
