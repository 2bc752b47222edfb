"""
Tests for L{smtpproxy.framing}: command lines, end of data, bare CR/LF.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.framing import TOO_LONG, Framer, LineEndCheck


def commands(framer):
    """Every command the framer can give now."""
    out = []
    while (line := framer.next_command()) is not None:
        out.append(line)
    return out


def message(framer):
    """The data pieces the framer can give now, joined, and whether it ended."""
    data, end = b"", False
    while not end and (piece := framer.next_data()) is not None:
        data += piece.data
        end = piece.end
    return data, end


class CommandTests(SynchronousTestCase):
    def test_lines(self):
        framer = Framer(2048)
        framer.feed(b"EHLO a\r\nNOOP\r\nQU")
        self.assertEqual(commands(framer), [b"EHLO a", b"NOOP"])
        framer.feed(b"IT\r\n")
        self.assertEqual(commands(framer), [b"QUIT"])

    def test_bare_lf_is_not_a_line_end(self):
        framer = Framer(2048)
        framer.feed(b"NOOP\nRSET\r\n")
        self.assertEqual(commands(framer), [b"NOOP\nRSET"])

    def test_longest_line(self):
        framer = Framer(10)
        framer.feed(b"x" * 10 + b"\r\n")
        self.assertEqual(commands(framer), [b"x" * 10])

    def test_overlong_line_reported_once_and_skipped(self):
        """A line over the limit is one TOO_LONG; the next line is intact."""
        framer = Framer(10)
        framer.feed(b"x" * 11)
        self.assertEqual(commands(framer), [])
        framer.feed(b"y")
        self.assertEqual(commands(framer), [TOO_LONG])
        framer.feed(b"z" * 100000 + b"\r")
        self.assertEqual(commands(framer), [])
        framer.feed(b"\nNOOP\r\n")
        self.assertEqual(commands(framer), [b"NOOP"])

    def test_overlong_line_is_not_buffered(self):
        framer = Framer(10)
        framer.feed(b"x" * 20)
        self.assertEqual(commands(framer), [TOO_LONG])
        framer.feed(b"x" * 100000)
        commands(framer)
        self.assertEqual(framer._buffer, b"")

    def test_discard(self):
        """STARTTLS: what the client pipelined behind it is forgotten."""
        framer = Framer(2048)
        framer.feed(b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(framer.next_command(), b"STARTTLS")
        framer.discard()
        self.assertEqual(commands(framer), [])


class DataTests(SynchronousTestCase):
    def data(self, *chunks, limit=2048):
        framer = Framer(limit)
        framer.start_data()
        for chunk in chunks:
            framer.feed(chunk)
        return framer

    def test_simple(self):
        framer = self.data(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertEqual(message(framer), (b"Subject: x\r\n\r\nbody\r\n", True))
        self.assertFalse(framer.in_data)
        self.assertEqual(commands(framer), [b"QUIT"])

    def test_empty_message(self):
        """The marker right after 354 ends an empty message."""
        self.assertEqual(message(self.data(b".\r\n")), (b"", True))

    def test_dot_stuffing_is_kept(self):
        """Wire form: the upstream gets the stuffed dots as they were sent."""
        framer = self.data(b"..a\r\n.b\r\n..\r\n.\r\n")
        self.assertEqual(message(framer), (b"..a\r\n.b\r\n..\r\n", True))

    def test_lookalikes_do_not_end_data(self):
        for fake in [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n. \r\n"]:
            framer = self.data(b"a" + fake + b"MAIL FROM:<x@y.z>\r\n")
            data, end = message(framer)
            self.assertFalse(end, fake)

    def test_bare_line_ends_flagged(self):
        for body in [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n", b"a\n.\r\n"]:
            framer = self.data(body, b".\r\n")
            message(framer)
            self.assertTrue(framer.bare_line_end, body)

    def test_clean_message_not_flagged(self):
        framer = self.data(b"a\r\n\r\nb\r\n.\r\n")
        message(framer)
        self.assertFalse(framer.bare_line_end)

    def test_flag_is_per_message(self):
        framer = self.data(b"a\nb\r\n.\r\n")
        message(framer)
        framer.start_data()
        framer.feed(b"ok\r\n.\r\n")
        message(framer)
        self.assertFalse(framer.bare_line_end)

    def test_marker_split_everywhere(self):
        """The marker is found whatever byte the chunks are cut at."""
        stream = b"x\r\n..y\r\n.\r\nNOOP\r\n"
        for cut in range(1, len(stream)):
            framer = self.data(stream[:cut])
            first = message(framer)
            framer.feed(stream[cut:])
            second = (b"", True) if first[1] else message(framer)
            self.assertEqual(first[0] + second[0], b"x\r\n..y\r\n", cut)
            self.assertTrue(second[1])
            self.assertEqual(commands(framer), [b"NOOP"])

    def test_long_line_stays_data(self):
        """A line of any length is data; it never drops into command mode."""
        line = b"A" * 100000 + b"\r\nRSET\r\n"
        framer = self.data(line, limit=10)
        data, end = message(framer)
        self.assertFalse(end)
        self.assertEqual(commands(framer), [])
        framer.feed(b".\r\n")
        rest, end = message(framer)
        self.assertEqual(data + rest, line)
        self.assertTrue(end)

    @given(st.lists(st.binary(max_size=20)), st.data())
    def test_any_chunking(self, lines, data):
        """Any split of any stream yields the same message and rest."""
        lines = [l.replace(b"\r", b"").replace(b"\n", b"") for l in lines]
        body = b"".join(b"." * l.startswith(b".") + l + b"\r\n" for l in lines)
        stream = body + b".\r\nNOOP\r\n"
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        framer = Framer(2048)
        framer.start_data()
        got, end, start = b"", False, 0
        for cut in cuts + [len(stream)]:
            framer.feed(stream[start:cut])
            start = cut
            if not end:
                piece, end = message(framer)
                got += piece
        self.assertEqual((got, end), (body, True))
        self.assertEqual(commands(framer), [b"NOOP"])
        self.assertFalse(framer.bare_line_end)


class LineEndCheckTests(SynchronousTestCase):
    @given(st.binary(max_size=64), st.data())
    def test_matches_whole_scan(self, stream, data):
        """Chunked checking agrees with looking at the whole stream at once."""
        stream += b"\r\n"
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        check, start = LineEndCheck(), 0
        for cut in cuts + [len(stream)]:
            check.update(stream[start:cut])
            start = cut
        pairs = stream.count(b"\r\n")
        bare = stream.count(b"\r") != pairs or stream.count(b"\n") != pairs
        self.assertEqual(check.bare, bare)
