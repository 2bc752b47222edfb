"""
Hand the proxy its input cut exactly where a test chooses.

A client cannot choose how its bytes reach the proxy: TCP may merge or split writes, and
Twisted's TLS transport merges all the writes of one reactor turn into one record.  Yet
smuggling tests must put a chunk boundary at every byte of an attack.  L{listen_splitting}
serves the same proxy factory on a second loopback port and passes each session's input
(decrypted, once TLS is on) on in the pieces the test asks for: one byte at a time, or cut
once after a chosen number of bytes.  Everything else (TLS, timers, replies) is the real
path, because the wrapper sits between the connection and the real session.
"""

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from tests.support.loopback import listen_loopback


def listen_splitting(reactor, factory):
    """
    Serve C{factory} on another 127.0.0.1 port; return the L{Splitting} factory (its
    C{server} is the L{tests.support.loopback.LoopbackServer}, to close and get the port).
    """
    splitting = Splitting(factory)
    splitting.server = listen_loopback(reactor, splitting)
    return splitting


class _Splitter(ProtocolWrapper):
    def dataReceived(self, data):
        for piece in self.factory.pieces(data):
            self.wrappedProtocol.dataReceived(piece)


class Splitting(WrappingFactory):
    """
    @ivar bytewise: give the sessions their input one byte at a time.
    """

    protocol = _Splitter
    noisy = False

    def __init__(self, factory):
        super().__init__(factory)
        self.bytewise = False
        self._until_cut = None

    def cut_after(self, count):
        """Make a chunk boundary after the next C{count} bytes of input, wherever it falls."""
        self._until_cut = count

    def pieces(self, data):
        if self.bytewise:
            return [data[i:i + 1] for i in range(len(data))]
        cut = self._until_cut
        if cut is None:
            return [data]
        if cut > len(data):
            self._until_cut -= len(data)
            return [data]
        self._until_cut = None
        return [data[:cut], data[cut:]] if 0 < cut < len(data) else [data]
