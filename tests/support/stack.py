"""
The whole proxy on loopback: a fake policy API, a recording upstream, and
the real proxy between them, with real TLS.

End-to-end tests start one L{Stack} per test and change the API's answer
or the upstream's script as the case needs.
"""

import os

from twisted.internet import defer

from smtpproxy import Limits, Policy, ProxyConfig, Upstream, build_factory
from tests.support.api import start_api
from tests.support.certs import client_options, make_certificates, server_options
from tests.support.client import connect, send_mail
from tests.support.loopback import listen_loopback
from tests.support.mail import AUTH_PLAIN, PASSWORD, USER
from tests.support.upstream import start_upstream


def allow(request):
    """The default API answer: allow, adding one header."""
    return {"allow": True, "headers": [{"name": "X-Policy", "value": "checked"}]}


def allow_login(request):
    """The default login API answer: allow."""
    return {"allow": True}


def by_password(request):
    """A login API that knows one password."""
    return {"allow": request["password"] == PASSWORD}


class Stack:
    """
    @ivar api: the L{tests.support.api.FakeApi}.
    @ivar auth_api: the L{tests.support.api.FakeApi} that checks logins
        (C{--auth_api}) when the stack has C{login_check}, else None.
    @ivar upstream: the L{tests.support.upstream.FakeUpstream}.
    @ivar port: the proxy's port.
    @ivar client_tls: client TLS options that trust the proxy's certificate.
    """

    def __init__(self, reactor, directory, limits=Limits(), api_timeout=5, upstream_timeout=5,
                 login_check=False, policy=None, upstream_offers=None, upstream_xclient=False,
                 **config):
        """
        @param policy: a L{Policy} to use instead of one naming the fake APIs
            (for a real API such as the reference one).
        @param upstream_offers: EHLO keywords the upstream offers besides its
            own (C{"DSN"}, C{"SMTPUTF8"}, C{"SIZE 1000"}); with it the proxy
            probes the upstream at start (L{ready} waits for that), without
            it there is no probe, so the upstream sees only the test's
            conversations.
        @param config: further L{ProxyConfig} fields, such as C{verify_recipients=True}.
        """
        os.makedirs(directory)
        certs = make_certificates(directory)
        self.reactor = reactor
        self.client_tls = client_options(certs)
        self.api = start_api(reactor, allow)
        self.auth_api = start_api(reactor, allow_login) if login_check else None
        self.upstream = start_upstream(reactor, offers=upstream_offers or ())
        auth_url = None if self.auth_api is None else self.auth_api.url
        self.config = ProxyConfig(
            policy=policy or Policy(url=self.api.url, timeout=api_timeout, auth_url=auth_url),
            upstream=Upstream(host="127.0.0.1", port=self.upstream.port, timeout=upstream_timeout,
                              xclient=upstream_xclient),
            tls=server_options(certs),
            hostname="proxy.test",
            limits=limits,
            probe_upstream=upstream_offers is not None,
            **config,
        )
        self.factory = build_factory(self.config, reactor)
        self._proxy = listen_loopback(reactor, self.factory)
        self.port = self._proxy.port

    def ready(self):
        """A Deferred firing once the proxy knows what the upstream offers."""
        return self.factory.capabilities.known()

    def settle(self):
        """
        Close the proxy's kept upstream connections (later messages each
        get a connection of their own) and wait until the upstream has
        none open, so it has seen every command the proxy will send it.
        """
        self.factory.pool.close()
        return self.upstream.wait_idle()

    def send(self, message, recipients=("bob@example.net",), sender="alice@example.com"):
        """Submit C{message} like a mail client; the reply to the final dot."""
        return send_mail(self.reactor, self.port, self.client_tls, USER, PASSWORD,
                         sender, list(recipients), message)

    @defer.inlineCallbacks
    def session(self, port=None, login=True):
        """
        A L{ScriptedClient} that has done EHLO, STARTTLS, EHLO and (with C{login}) AUTH;
        connected to C{port} when given (another listener of this proxy, with its input cut
        or its transcript on), else to the proxy's own.
        """
        client = yield connect(self.reactor, port or self.port)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.starttls(self.client_tls)
        yield client.command(b"EHLO client.example", expect=250)
        if login:
            yield client.command(AUTH_PLAIN, expect=235)
        return client

    def close(self):
        """Stop everything and wait until every connection is gone."""
        return defer.gatherResults([
            self._proxy.close(),
            self.factory.close(),
            self.api.close(),
            self.upstream.close(),
        ] + ([] if self.auth_api is None else [self.auth_api.close()]))

