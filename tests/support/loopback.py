"""
Serve any factory on 127.0.0.1 and tear it down without leaving the reactor dirty.

Trial fails a test whose reactor still holds sockets or DelayedCalls after cleanup.
Stopping the listening port is not enough: accepted connections (an HTTP keep-alive, an
SMTP session the peer never closed) live on, and closing them is asynchronous.  Wrapping the
factory lets us see every accepted connection, abort the open ones and wait until each has
really gone (its protocol's C{connectionLost}, with its timers, has run).
"""

from twisted.internet import defer
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


def listen_loopback(reactor, factory):
    """Listen with C{factory} on 127.0.0.1, on a port the system picks; return a L{LoopbackServer}."""
    return LoopbackServer(reactor, factory)


class LoopbackServer:
    """
    A listening port plus its accepted connections.

    @ivar port: the TCP port number.
    @ivar connections: how many connections were accepted so far.
    """

    def __init__(self, reactor, factory):
        self._tracker = _Tracker(factory)
        self._listening = reactor.listenTCP(0, self._tracker, interface="127.0.0.1")
        self.port = self._listening.getHost().port

    @property
    def connections(self):
        return self._tracker.accepted

    def wait_idle(self):
        """A Deferred that fires once no accepted connection is open (at once if none is)."""
        return self._tracker.wait_idle()

    def close(self):
        """Stop listening, abort every open connection; the Deferred fires when all are gone."""
        stopped = defer.maybeDeferred(self._listening.stopListening)
        for connection in list(self._tracker.protocols):
            connection.transport.abortConnection()
        return defer.gatherResults([stopped, self.wait_idle()]).addCallback(lambda _: None)


class _Connection(ProtocolWrapper):
    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.gone()


class _Tracker(WrappingFactory):
    protocol = _Connection
    noisy = False

    def __init__(self, factory):
        super().__init__(factory)
        self.accepted = 0
        self._idle = []

    def registerProtocol(self, p):
        super().registerProtocol(p)
        self.accepted += 1

    def wait_idle(self):
        if not self.protocols:
            return defer.succeed(None)
        self._idle.append(defer.Deferred())
        return self._idle[-1]

    def gone(self):
        """Called after a wrapped protocol's own C{connectionLost} has run."""
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
