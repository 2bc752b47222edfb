"""
The SMTP server factory: what a listening endpoint needs to serve the proxy.

It holds what all sessions share (the config, the clock, the policy
client, the upstream delivery) and builds one L{ProxySession} per
connection.  Both the twistd plugin and applications that embed the proxy
use it through L{build_factory}.
"""

import itertools

from twisted.mail import smtp

from smtpproxy import upstream
from smtpproxy.policy import PolicyClient
from smtpproxy.session import ProxySession
from smtpproxy.transaction import Transaction


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
        self._numbers = itertools.count(1)

    def buildProtocol(self, addr):
        session = ProxySession(self, next(self._numbers))
        session.callLater = self.reactor.callLater
        return session

    def transaction(self, login, client, helo):
        return Transaction(self, login, client, helo)

    def deliver(self, sender, recipients, data):
        """Relay one allowed message upstream: a Deferred firing with a Reply."""
        return upstream.deliver(
            self.reactor, self.config.upstream, self.config.hostname,
            sender, recipients, data,
        )

    def close(self):
        """Release shared resources (the API's connection pool): a Deferred."""
        return self.policy.close()


def build_factory(config, reactor):
    """
    The proxy as a Twisted server factory, for any stream endpoint.

    @param config: a L{smtpproxy.config.ProxyConfig}.
    @param reactor: the reactor (also the clock for timeouts).
    @return: a L{ProxyFactory}; call its C{close()} when you stop serving.
    """
    return ProxyFactory(config, reactor, PolicyClient(reactor, config.policy))
