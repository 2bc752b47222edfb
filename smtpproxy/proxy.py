# -*- test-case-name: tests.test_embedding -*-
"""
The proxy as one object for an application that embeds it: L{Proxy}
listens, drains and closes.

Stopping without losing a message has an order: stop accepting first, then
let the messages in flight finish (a client whose final dot went upstream
must hear the upstream's answer, or it sends the message again), and only
then close the connections kept to the policy API and the upstream, which
those messages may still need.  twistd's service (L{smtpproxy.tap.ProxyService}) stops through this
object too, so an embedder and the command line stop the same way.
"""

from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from smtpproxy import haproxy
from smtpproxy.descriptors import REFUSAL, guard
from smtpproxy.endpoints import endpoint_description
from smtpproxy.server import build_factory

log = Logger()


class Proxy:
    """
    The proxy with its listeners.

    @param config: a L{smtpproxy.config.ProxyConfig}.
    @param reactor: the reactor (also the clock for timeouts).
    @param listen: addresses for STARTTLS submission, as C{--listen} takes
        them: C{ip:port}, C{[v6]:port} or a Twisted endpoint string
        (C{haproxy:} ones included).
    @param listen_tls: addresses for implicit-TLS submission (port 465
        style), as C{--listen_tls} takes them.

    @ivar factory: the L{smtpproxy.server.ProxyFactory} that serves every
        listener (its C{metrics} for a C{/metrics} page of one's own).
    @ivar ports: the listening ports, once L{listen} has fired.
    @ivar listeners: (option, address, factory to serve, refusal for a full
        descriptor table) for each address, in order.
    """

    def __init__(self, config, reactor, listen=(), listen_tls=()):
        self.config = config
        self.factory = build_factory(config, reactor)
        self.ports = []
        self._reactor = reactor
        implicit = TLSMemoryBIOFactory(config.tls, False, self.factory)
        self.listeners = [("listen", address, self.factory, REFUSAL) for address in listen]
        self.listeners += [("listen_tls", address, implicit, b"") for address in listen_tls]

    @inlineCallbacks
    def listen(self):
        """
        Listen on every configured address.

        @return: a Deferred firing with the listening ports, in the order
            of the addresses; if one cannot listen, it fails with that
            reason, and the ports already listening are closed again.
        """
        try:
            for _, address, served, refusal in self.listeners:
                endpoint, served = self.endpoint(address, served)
                self.serving((yield endpoint.listen(served)), refusal)
        except BaseException:
            yield self._stop_listening()
            raise
        return list(self.ports)

    def endpoint(self, address, served):
        """
        The endpoint for C{address} and the factory to listen with there
        (a C{haproxy:} endpoint reads the PROXY header first, for at most
        C{--pretls_timeout}).

        @raise ValueError: (or C{KeyError}, C{IndexError}, as Twisted's
            endpoint parser raises them) for an address that is no endpoint.
        """
        description = endpoint_description(address)
        return haproxy.server(self._reactor, description, served, self.config.limits.pretls_timeout)

    def serving(self, port, refusal):
        """
        Take C{port}, listening for the proxy, as one of its own: guarded
        against a full descriptor table (L{guard}, answering C{refusal}),
        and closed by L{drain} or L{close}.
        """
        guard(port, self.factory.descriptors_exhausted, refusal)
        self.ports.append(port)

    def drain(self, timeout):
        """
        Stop serving without losing a message: stop listening, answer idle
        clients C{421 4.3.2}, and let the messages in flight finish
        (L{smtpproxy.server.ProxyFactory.drain}).

        @param timeout: seconds to wait for those messages; a message whose
            final dot went upstream is waited for even past it (its reply
            comes within the upstream timeout).
        @return: a Deferred that fires once every session has gone.
        """
        return self._stop_listening().addCallback(lambda _: self.factory.drain(timeout))

    def close(self):
        """
        Release what the proxy holds beyond its sessions (the connections
        kept to the policy API and the upstream, timers), after L{drain};
        any port still listening is closed first.

        @return: a Deferred that fires once all is released.
        """
        return self._stop_listening().addCallback(lambda _: self.factory.close())

    def _stop_listening(self):
        ports, self.ports = self.ports, []
        stopped = gatherResults([maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)
        return stopped.addErrback(lambda failure: log.failure("cannot stop listening", failure))
