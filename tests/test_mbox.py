"""
A message whose first line is an mbox envelope line (C{From sender date}):
the line is dropped, and the header fields after it are the header block,
for the API and upstream (issue 13).
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy.headers import HeaderReader, HeaderTooLarge
from tests.support.stack import Stack
from tests.support.mail import MESSAGE, checked

ENVELOPE = b"From alice@example.com Thu Dec  3 10:00:00 2026\r\n"


class ReaderTests(SynchronousTestCase):
    def read(self, *chunks):
        reader = HeaderReader(1024)
        for chunk in chunks:
            rest = reader.feed(chunk)
            if rest is not None:
                return reader, rest
        return reader, None

    def test_dropped_and_the_headers_read(self):
        for size in [1, 3, 7, len(ENVELOPE) + 2, 1000]:
            data = ENVELOPE + MESSAGE
            reader, rest = self.read(*[data[i:i + size] for i in range(0, len(data), size)])
            self.assertEqual(reader.envelope_line, ENVELOPE, size)
            self.assertEqual([f.name for f in reader.block.fields], [b"From", b"To", b"Subject"])
            self.assertTrue(MESSAGE.startswith(reader.block.raw + rest), size)

    def test_only_first_line(self):
        """A From line after the first is no header: it ends the block, as before."""
        reader, rest = self.read(b"Subject: x\r\n" + ENVELOPE + b"body\r\n")
        self.assertIsNone(reader.envelope_line)
        self.assertEqual(rest, ENVELOPE + b"body\r\n")

    def test_from_field_is_kept(self):
        reader, _ = self.read(b"From: a@example.com\r\n\r\n")
        self.assertIsNone(reader.envelope_line)
        self.assertEqual([f.name for f in reader.block.fields], [b"From"])

    def test_message_of_only_the_line(self):
        reader = HeaderReader(1024)
        self.assertIsNone(reader.feed(ENVELOPE))
        self.assertEqual(reader.finish().fields, ())

    def test_line_counts_toward_the_limit(self):
        """The dropped line and the block after it are one header block in size."""
        fields = len(MESSAGE.split(b"\r\n\r\n")[0]) + 2
        with self.assertRaises(HeaderTooLarge):
            HeaderReader(len(ENVELOPE) + fields - 1).feed(ENVELOPE + MESSAGE)
        self.assertIsNotNone(HeaderReader(len(ENVELOPE) + fields).feed(ENVELOPE + MESSAGE))

    def test_line_dribbled_byte_by_byte_is_searched_once(self):
        """
        A client sending a long From line in one-byte pieces (TLS records)
        must not make every piece search the whole line again: 128 KiB so
        sent took 10 s of the reactor.
        """
        reader = HeaderReader(1 << 17)
        reader._buf = _CountingBuffer()
        for byte in b"From " + b"x" * 20000 + b"\r\nSubject: x\r\n\r\nbody":
            if reader.feed(bytes([byte])) is not None:
                break
        self.assertEqual([f.name for f in reader.block.fields], [b"Subject"])
        self.assertLess(_CountingBuffer.searched, 3 * 20000)


class _CountingBuffer(bytearray):
    """A reader's buffer that counts the bytes its line-end searches look at."""

    searched = 0

    def find(self, sub, start=0, *end):
        _CountingBuffer.searched += len(self) - start
        return super().find(sub, start, *end)


class EndToEndTests(TestCase):
    @defer.inlineCallbacks
    def test_api_and_upstream_see_the_real_headers(self):
        stack = Stack(reactor, self.mktemp())
        self.addCleanup(stack.close)
        reply = yield stack.send(ENVELOPE + MESSAGE)
        self.assertEqual(reply.code, 250)
        (request,) = stack.api.requests
        self.assertEqual([h["name"] for h in request.json["headers"]], ["From", "To", "Subject"])
        (message,) = stack.upstream.messages
        self.assertEqual(message.data,
                         checked(MESSAGE))
