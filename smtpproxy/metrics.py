# -*- test-case-name: tests.test_operations -*-
"""
Prometheus metrics (docs/protocol.rst section 6, C{--metrics=ADDR}).

One L{Metrics} per proxy, on its own registry rather than
C{prometheus_client}'s global one, so that tests and applications that
embed several proxies count separately.  The page is rendered in the
reactor thread: C{prometheus_client.twisted} would need a thread pool for
what is a few microseconds of string formatting.
"""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from twisted.web.pages import notFound
from twisted.web.resource import Resource

from smtpproxy import replies

OUTCOMES = (
    "delivered", "denied", "temp_failed", "refused_upstream", "refused_limit", "invalid", "aborted",
)
LOGINS = ("ok", "invalid", "temp_failed", "locked_out")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 52428800)


def outcome(reply, policy_denied=False):
    """
    The outcome label for a message's final C{reply}, the word its log line
    starts with too.

    @param reply: the L{replies.Reply} the client got, or C{None} for a
        message that never got one: its client went away (or was cut off)
        before the final dot.
    @param policy_denied: the policy API refused the message (its 550 or
        450), as opposed to a refusal from the upstream or a limit.
    """
    if reply is None:
        return "aborted"
    if reply.code == 250:
        return "delivered"
    if policy_denied:
        return "denied"
    if reply in (replies.MESSAGE_TOO_BIG, replies.HEADER_TOO_BIG):
        return "refused_limit"
    if reply == replies.BARE_LINE_END:
        return "invalid"
    return "temp_failed" if reply.temporary else "refused_upstream"


def login_result(reply):
    """The result label for the reply to an AUTH checked with the login API."""
    return {235: "ok", 535: "invalid", 421: "locked_out"}.get(reply.code, "temp_failed")


class Metrics:
    """The proxy's counters, gauges and histograms."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "smtpproxy_connections_current", "Client connections open now.",
            registry=self.registry)
        self.connections_total = Counter(
            "smtpproxy_connections", "Client connections made, admitted or refused.",
            registry=self.registry)
        self.connections_refused = Counter(
            "smtpproxy_connections_refused", "Client connections refused by a limit.",
            ["limit"], registry=self.registry)
        self.messages = Counter(
            "smtpproxy_messages", "Messages by outcome.", ["outcome"], registry=self.registry)
        for name in OUTCOMES:
            self.messages.labels(name)
        self.logins = Counter(
            "smtpproxy_logins", "Logins checked at AUTH (--auth_api), by result.", ["result"],
            registry=self.registry)
        for name in LOGINS:
            self.logins.labels(name)
        self.lockouts = Counter(
            "smtpproxy_auth_lockouts",
            "Client addresses locked out after too many failed logins.",
            registry=self.registry)
        self.api_latency = Histogram(
            "smtpproxy_api_latency_seconds", "Policy API exchanges.",
            buckets=_LATENCY, registry=self.registry)
        self.upstream_latency = Histogram(
            "smtpproxy_upstream_latency_seconds", "Upstream deliveries, from the allow to the reply.",
            buckets=_LATENCY, registry=self.registry)
        self.upstream_connections = Counter(
            "smtpproxy_upstream_connections",
            "Upstream connections opened for messages (kept ones carry several).",
            registry=self.registry)
        self.upstream_idle = Gauge(
            "smtpproxy_upstream_idle_connections",
            "Upstream connections kept idle for the next message now.",
            registry=self.registry)
        self.message_size = Histogram(
            "smtpproxy_message_size_bytes", "Size of messages received.",
            buckets=_SIZE, registry=self.registry)

    def resource(self):
        """A twisted.web resource serving the page at C{/metrics}."""
        root = _Root()
        root.putChild(b"metrics", _Page(self.registry))
        return root


class _Root(Resource):
    def getChild(self, path, request):
        return notFound()


class _Page(Resource):
    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)
