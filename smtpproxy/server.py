# -*- test-case-name: tests.test_end_to_end -*-
"""
The SMTP server factory: what a listening endpoint needs to serve the proxy.

It holds what all sessions share (the config, the clock, the policy
client, the upstream delivery, the recipient verdicts, the open sessions
and their count per address) and builds one L{ProxySession} per
connection.  Both the twistd plugin and applications that embed the proxy
use it through L{build_factory}.
"""

import itertools
from functools import partial

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.mail import smtp

from smtpproxy import replies, upstream
from smtpproxy.capabilities import UpstreamCapabilities
from smtpproxy.connections import ConnectionTable
from smtpproxy.descriptors import log_shortage
from smtpproxy.headers import Budget
from smtpproxy.lockout import FailureTable
from smtpproxy.login import build_login_request
from smtpproxy.metrics import Metrics, login_result
from smtpproxy.policy import PolicyClient
from smtpproxy.pool import Pool
from smtpproxy.reports import FloodReport
from smtpproxy.session import ProxySession
from smtpproxy.tls import log_handshake_failures
from smtpproxy.transaction import Services, Transaction
from smtpproxy.verify import RecipientCheck, VerdictCache

log = Logger()


class ProxyFactory(smtp.SMTPFactory):
    """
    Builds sessions; see L{build_factory}.
    """

    noisy = False

    def __init__(self, config, reactor, policy):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.policy = policy
        self.metrics = Metrics()
        self.connections = ConnectionTable(config.limits, reactor, self.metrics)
        self.verdicts = VerdictCache(reactor, config.verify_cache_time)
        self.header_budget = Budget(config.limits.header_memory)
        self.failures = FailureTable(
            config.limits.max_auth_failures, config.limits.auth_failure_window, reactor)
        self.handshake_failures = FloodReport(reactor, log_handshake_failures)
        self.descriptor_shortage = FloodReport(reactor, partial(log_shortage, log))
        self.header_memory_refusals = FloodReport(reactor, self._log_header_memory)
        self.capabilities = UpstreamCapabilities(reactor, self._probe)
        self.pool = Pool(reactor, config.upstream, config.hostname, self.capabilities.learn,
                         self.no_descriptor_to_connect, self.metrics)
        self.message_services = Services(
            clock=reactor, limits=config.limits, policy=policy, deliver=self.deliver,
            recipient_check=self.recipient_check, metrics=self.metrics,
            header_budget=self.header_budget, header_memory_full=self.header_memory_full,
        )
        self.draining = False
        self._numbers = itertools.count(1)
        self._sessions = set()
        self._counted = set()
        self._drained = None

    def startFactory(self):
        """The first listener is up: learn what the upstream offers."""
        if self.config.probe_upstream:
            self.capabilities.start()
        if self.config.upstream.xclient:
            self.capabilities.known().addCallback(_warn_without_xclient)

    def stopFactory(self):
        self.capabilities.stop()

    def _probe(self):
        return upstream.probe(self.reactor, self.config.upstream, self.config.hostname)

    def buildProtocol(self, addr):
        session = ProxySession(self, next(self._numbers))
        session.callLater = self.reactor.callLater
        return session

    def connected(self, session):
        """
        A session's connection is made: C{None} to greet it, or the
        L{smtpproxy.replies.Reply} to refuse it with (a connection limit,
        or the proxy is draining).
        """
        self.metrics.connections_total.inc()
        if self.draining:
            self.metrics.connections_refused.labels("draining").inc()
            return replies.SHUTTING_DOWN
        if self._locked(session.client):
            self.metrics.connections_refused.labels("max_auth_failures").inc()
            return replies.AUTH_LOCKED_OUT
        refusal = self.connections.admit(session.client)
        if refusal is None:
            self._sessions.add(session)
            self._counted.add(session)
            self.metrics.connections.inc()
        return refusal

    def finished(self, session):
        """
        A session has sent its last reply (221, 421): it no longer counts
        toward the connection limits.  Its close may take a while to be
        processed (a TLS shutdown, a busy reactor), and a client that
        reconnects at once after C{221} must not be refused meanwhile.
        The drain still waits for the close.
        """
        if session in self._counted:
            self._counted.remove(session)
            self.connections.release(session.client)
            self.metrics.connections.dec()

    def disconnected(self, session):
        """A session's connection is gone; admitted ones free their place."""
        self.finished(session)
        if session in self._sessions:
            self._sessions.remove(session)
            if self._drained is not None and not self._sessions:
                self._drained.callback(None)

    def drain(self, timeout):
        """
        Stop serving, without losing a message (SIGTERM): new connections
        and every session not waiting for its message's outcome get
        C{421 4.3.2} and are closed; the messages past their final dot are
        finished (API and upstream), their clients get the real reply, then
        C{421}.  Call it once, after the listeners have stopped.

        @param timeout: seconds to wait for those messages; sessions still
            waiting then are cut off without a reply (see L{cut_off}).
        @return: a Deferred that fires once every session has gone.
        """
        self.draining = True
        self._drained = Deferred()
        delivering = sum(session.delivering for session in self._sessions)
        log.info(
            "draining: closing {idle} idle session(s), waiting up to {timeout} s "
            "for {delivering} message(s) in flight",
            idle=len(self._sessions) - delivering, delivering=delivering, timeout=timeout,
        )
        for session in list(self._sessions):
            session.shut_down()
        if not self._sessions:
            self._drained.callback(None)
        cutoff = self.reactor.callLater(timeout, self.cut_off)
        return self._drained.addBoth(_cancelling, cutoff)

    def cut_off(self, everything=False):
        """
        End the drain: drop the sessions still waiting, without a reply;
        their messages are withdrawn before the final dot goes upstream.
        A message whose final dot did go is waited for, unless
        C{everything}: the upstream may be storing it, and a client cut off
        then would send it again; its reply comes within
        C{--upstream_timeout}, which bounds the upstream's every step.

        @param everything: cut off those too (a second SIGTERM: the
            operator wants the process gone now).
        """
        committed = [] if everything else [s for s in self._sessions if s.committed]
        log.warn(
            "{why}: cutting off {count} session(s) without a reply; waiting up to {timeout} s "
            "for {committed} message(s) whose final dot went upstream",
            why="drain ended early" if everything else "drain timeout",
            count=len(self._sessions) - len(committed), committed=len(committed),
            timeout=self.config.upstream.timeout,
        )
        for session in list(self._sessions):
            if session not in committed:
                session.cut_off()

    def authenticate(self, login, mechanism, client, helo):
        """
        Check a completed AUTH with the login API (C{--auth_api}): a
        Deferred firing with the reply to the AUTH command, C{235} only
        when the API allowed it; never failing.  An address locked out
        after too many failures gets C{421} without asking, so a guesser's
        parallel connections learn nothing during the lock; the failure
        that locks it gets C{421} instead of its C{535}.
        """
        if self._locked(client):
            return succeed(self._logged(replies.AUTH_LOCKED_OUT, login, mechanism, client))
        request = build_login_request(login, mechanism, client, helo)
        checked = self.policy.check_login(request)
        return checked.addCallback(self._judged, login, mechanism, client)

    def _judged(self, verdict, login, mechanism, client):
        reply = verdict.reply
        if reply == replies.AUTH_INVALID and not self.config.limits.exempt(client):
            if self.failures.failed(client):
                self.metrics.lockouts.inc()
                log.warn(
                    "locking out {client} for {window} s after {count} failed logins",
                    client=client, window=self.config.limits.auth_failure_window,
                    count=self.config.limits.max_auth_failures,
                )
            if self.failures.locked(client):
                reply = replies.AUTH_LOCKED_OUT
        return self._logged(reply, login, mechanism, client)

    def _logged(self, reply, login, mechanism, client):
        """One log line and one count per login checked; never the password."""
        result = login_result(reply)
        self.metrics.logins.labels(result).inc()
        log.info(
            "login {result} client={client} user={user!r} mechanism={mechanism} "
            "reply={code} {text}",
            result=result, client=client, user=login.username, mechanism=mechanism,
            code=reply.code, text=reply.text,
        )
        return reply

    def _locked(self, client):
        return not self.config.limits.exempt(client) and self.failures.locked(client)

    def transaction(self, login, client, helo, **session):
        """A new L{Transaction}; C{session} holds its C{connection} and C{tls}."""
        return Transaction(self.message_services, login, client, helo, **session)

    def recipient_check(self, sender, mail_parameters=()):
        """Ask the upstream about a transaction's recipients (C{--verify_recipients})."""
        return RecipientCheck(self, sender, mail_parameters)

    def deliver(self, sender, recipients, data, mail_parameters=(), rcpt_parameters=None,
                client=None):
        """
        Relay one allowed message upstream: a Deferred firing with a Reply.
        C{client} is the real client's XCLIENT attributes (C{--upstream_xclient}).
        """
        started = self.reactor.seconds()
        delivered = self.pool.deliver(
            sender, recipients, data, mail_parameters, rcpt_parameters, client=client)
        return delivered.addCallback(self._timed, started)

    def _timed(self, reply, started):
        self.metrics.upstream_latency.observe(self.reactor.seconds() - started)
        return reply

    def handshake_failed(self, client, reason):
        """A client's TLS handshake failed for OpenSSL's C{reason}: log it, in floods summed up."""
        self.handshake_failures.add(reason, client)

    def close(self):
        """
        Release shared resources (the upstream and API connection pools,
        the log summaries' timers, after their last lines): a Deferred.
        """
        self.connections.refusals.stop()
        self.handshake_failures.stop()
        self.descriptor_shortage.stop()
        self.header_memory_refusals.stop()
        return DeferredList([self.pool.close(), self.policy.close()])

    def descriptors_exhausted(self, client):
        """A client met a full descriptor table (L{smtpproxy.descriptors.guard})."""
        self.metrics.connections_refused.labels("descriptors").inc()
        self.descriptor_shortage.add("accept", client)

    def header_memory_full(self, client):
        """A message met a full C{--header_memory}: counted into one line a minute."""
        self.header_memory_refusals.add("refused", client)

    def _log_header_memory(self, counts, last):
        log.warn(
            "header memory (--header_memory={limit}) full: {count} message(s) refused with "
            "452 4.3.1, the last from {last}",
            limit=self.config.limits.header_memory, count=counts["refused"], last=last,
        )

    def no_descriptor_to_connect(self, peer):
        """A connection to C{peer} (the API, the upstream) failed for want of a descriptor."""
        self.descriptor_shortage.add("connect", peer)


def _warn_without_xclient(capabilities):
    if not capabilities.offers("XCLIENT"):
        log.warn("--upstream_xclient: the upstream does not offer XCLIENT; it sees the proxy "
                 "as every message's client (with Postfix: smtpd_authorized_xclient_hosts)")


def _cancelling(result, call):
    if call.active():
        call.cancel()
    return result


def build_factory(config, reactor):
    """
    The proxy as a Twisted server factory, for any stream endpoint.

    @param config: a L{smtpproxy.config.ProxyConfig}.
    @param reactor: the reactor (also the clock for timeouts).
    @return: a L{ProxyFactory}; call its C{close()} when you stop serving.
    """
    policy = PolicyClient(reactor, config.policy)
    factory = ProxyFactory(config, reactor, policy)
    policy.exhausted = factory.no_descriptor_to_connect
    return factory
