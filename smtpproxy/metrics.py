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

from smtpproxy.outcome import OUTCOMES
from smtpproxy.pages import Page, Root

LOGINS = ("ok", "invalid", "temp_failed", "locked_out")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 52428800)


def login_result(reply):
    """The result label for the reply to an AUTH checked with the login API."""
    return {235: "ok", 535: "invalid", 421: "locked_out"}.get(reply.code, "temp_failed")


class Metrics:
    """The proxy's counters, gauges and histograms."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.connections = self._gauge(
            "smtpproxy_connections_current", "Client connections open now.")
        self.connections_total = self._counter(
            "smtpproxy_connections", "Client connections made, admitted or refused.")
        self.connections_refused = self._counter(
            "smtpproxy_connections_refused", "Client connections refused by a limit.", "limit")
        self.messages = self._counter(
            "smtpproxy_messages", "Messages by outcome.", "outcome", OUTCOMES)
        self.logins = self._counter(
            "smtpproxy_logins", "Logins checked at AUTH (--auth_api), by result.", "result",
            LOGINS)
        self.lockouts = self._counter(
            "smtpproxy_auth_lockouts", "Client addresses locked out after too many failed logins.")
        self.api_latency = self._histogram(
            "smtpproxy_api_latency_seconds", "Policy API exchanges.", _LATENCY)
        self.upstream_latency = self._histogram(
            "smtpproxy_upstream_latency_seconds",
            "Upstream deliveries, from the allow to the reply.", _LATENCY)
        self.upstream_connections = self._counter(
            "smtpproxy_upstream_connections",
            "Upstream connections opened for messages (kept ones carry several).")
        self.upstream_idle = self._gauge(
            "smtpproxy_upstream_idle_connections",
            "Upstream connections kept idle for the next message now.")
        self.message_size = self._histogram(
            "smtpproxy_message_size_bytes", "Size of messages received.", _SIZE)

    def _counter(self, name, documentation, label=None, values=()):
        """
        A counter in this registry, by C{label} if given; each of C{values}
        is shown from the start (at 0), so a rate query finds it.
        """
        counter = Counter(name, documentation, [label] if label else [], registry=self.registry)
        for value in values:
            counter.labels(value)
        return counter

    def _gauge(self, name, documentation):
        return Gauge(name, documentation, registry=self.registry)

    def _histogram(self, name, documentation, buckets):
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)

    def resource(self):
        """A twisted.web resource serving the page at C{/metrics}."""
        root = Root()
        content_type = CONTENT_TYPE_LATEST.encode("ascii")
        root.putChild(b"metrics", Page(content_type, lambda: (200, generate_latest(self.registry))))
        return root
