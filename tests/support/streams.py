"""
Messages too big to hold in memory: made on the fly by the client, digested on the fly by
the upstream, so a test can push a gigabyte through the proxy and still check every byte.

L{MessageStream} is a pull producer: it makes the next chunk only when the connection has
taken the previous one, so neither the message nor a send buffer of it builds up in the
test process, where the proxy also runs.  L{DigestCollector} is a
L{tests.support.upstream.FakeUpstream} collector that keeps the size and SHA-256 of what it
records instead of the bytes.
"""

import hashlib

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.mail import smtp
from zope.interface import implementer

LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 16 + b"\r\n"  # 994 bytes
CHUNK_LINES = 64


@attrs.frozen
class Digest:
    """What L{DigestCollector} records in place of the content."""

    size: int
    sha256: str


@implementer(smtp.IMessage)
class DigestCollector:
    """
    Receives a message line by line, as the fake upstream's own collector does, and keeps
    only the size and hash of the lines plus CRLF: that is, of what the recording would be.
    """

    def __init__(self):
        self._hash = hashlib.sha256()
        self._size = 0

    def lineReceived(self, line):
        self._hash.update(line)
        self._hash.update(b"\r\n")
        self._size += len(line) + 2

    def eomReceived(self):
        return defer.succeed(Digest(self._size, self._hash.hexdigest()))

    def connectionLost(self):
        pass


@implementer(IPullProducer)
class MessageStream:
    """
    A message of C{head} (a header block without its empty line) and then a body of at least
    C{size} bytes, written in wire form to a transport after the 354, final dot included.

    Each body chunk starts with a line that begins with a dot and holds the chunk's number, so
    dot-stuffing is exercised at every chunk start and a chunk lost, repeated or reordered
    anywhere on the way changes the digest.

    @param inserted: the header lines the proxy adds at the end of the header block (the
        policy API's headers), for L{expected}.
    """

    def __init__(self, size, head, inserted):
        self._chunks = -(-size // (len(LINE) * CHUNK_LINES))
        self._head = head
        self._next = 0
        self._transport = None
        self._done = None
        self._expected = hashlib.sha256(head + inserted + b"\r\n")
        self._expected_size = len(head) + len(inserted) + 2

    def write_to(self, transport):
        """Start writing; a Deferred that fires once the final dot is written."""
        self._transport = transport
        self._done = defer.Deferred()
        transport.write(self._head + b"\r\n")
        transport.registerProducer(self, False)
        return self._done

    def expected(self):
        """The L{Digest} the upstream must record, once the whole message was written."""
        return Digest(self._expected_size, self._expected.hexdigest())

    def resumeProducing(self):
        if self._next == self._chunks:
            self._transport.unregisterProducer()
            self._transport.write(b".\r\n")
            self._done.callback(None)
            return
        content = b".%09d" % self._next + LINE[10:] + LINE * (CHUNK_LINES - 1)
        self._next += 1
        self._expected.update(content)
        self._expected_size += len(content)
        self._transport.write(b"." + content)

    def stopProducing(self):
        """The connection went away before the end."""
        if not self._done.called:
            self._done.errback(ConnectionError("connection lost while streaming the message"))
