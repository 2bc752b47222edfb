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
    """Connect the wrapped protocol when the PROXY header has been read."""

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

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
            protocol.makeConnection(self)
            if rest.data:
                protocol.dataReceived(rest.data)

    def connectionLost(self, reason):
        if self._proxyInfo is None:
            self.factory.unregisterProtocol(self)
        else:
            super().connectionLost(reason)


class _Rest:
    """Stands in for the session while the header is parsed: keeps what follows it."""

    data = b""

    def dataReceived(self, data):
        self.data += data


class _HeaderFirstFactory(HAProxyWrappingFactory):
    protocol = _HeaderFirst


def server(reactor, description, factory):
    """
    The endpoint for C{description} and the factory to listen with there.

    A description starting with C{haproxy:} is served through
    L{_HeaderFirst}; any other goes to L{serverFromString} unchanged.
    """
    if description.startswith(PREFIX):
        return serverFromString(reactor, description[len(PREFIX):]), _HeaderFirstFactory(factory)
    return serverFromString(reactor, description), factory
