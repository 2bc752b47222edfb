# -*- test-case-name: tests.test_haproxy -*-
"""
The PROXY protocol (HAProxy v1/v2) in front of the proxy's sessions.

Twisted's C{haproxy:} endpoint connects the wrapped protocol at once and
reads the PROXY header afterwards, so the session would greet, check the
per-address connection limit and log its client with the load balancer's
address.  Here the session is connected only once the header has named the
real client; until then nothing is sent (a balancer sends the header first,
so no client ever waits for it).

Twisted exports only C{proxyEndpoint}; the wrapper subclassed here is
private, so tests/test_haproxy.py pins the behaviour relied on.
"""

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from zope.interface import directlyProvides, providedBy

PREFIX = "haproxy:"


class _HeaderFirst(HAProxyProtocolWrapper):
    """
    Connect the wrapped protocol when the PROXY header has been read.  A
    connection that sends none within the factory's C{timeout} is dropped:
    until then it is not yet a session, so no session timer guards it.
    """

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._waiting = self.factory.clock.callLater(self.factory.timeout, self.abortConnection)

    def dataReceived(self, data):
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        protocol, rest = self.wrappedProtocol, _Rest()
        self.wrappedProtocol = rest
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol = protocol
        if self._proxyInfo is not None:
            self._waiting.cancel()
            protocol.makeConnection(self)
            if rest.data:
                protocol.dataReceived(rest.data)

    def connectionLost(self, reason):
        if self._proxyInfo is None:
            if self._waiting.active():
                self._waiting.cancel()
            self.factory.unregisterProtocol(self)
        else:
            super().connectionLost(reason)


class _Rest:
    """Stands in for the session while the header is parsed: keeps what follows it."""

    data = b""

    def dataReceived(self, data):
        self.data += data


class _HeaderFirstFactory(HAProxyWrappingFactory):
    """
    @ivar clock: the reactor, for the header timeout.
    @ivar timeout: seconds a connection may take to send its PROXY header.
    """

    protocol = _HeaderFirst

    def __init__(self, factory, clock, timeout):
        super().__init__(factory)
        self.clock = clock
        self.timeout = timeout


def server(reactor, description, factory, header_timeout):
    """
    The endpoint for C{description} and the factory to listen with there.

    A description starting with C{haproxy:} is served through
    L{_HeaderFirst}, which waits up to C{header_timeout} seconds for the
    header; any other goes to C{serverFromString} unchanged.
    """
    if description.startswith(PREFIX):
        endpoint = serverFromString(reactor, description[len(PREFIX):])
        return endpoint, _HeaderFirstFactory(factory, reactor, header_timeout)
    return serverFromString(reactor, description), factory
