"""
Tests for L{smtpproxy.framing}: command lines, end of data, bare CR/LF.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.framing import BARE_LF, TOO_LONG, Framer


def commands(framer):
    """Every command the framer can give now."""
    out = []
    while (line := framer.next_command()) is not None:
        out.append(line)
    return out


def fed(framer, *steps):
    """Feed each of C{steps} in turn, taking every command after each: the lists taken."""
    taken = []
    for data in steps:
        framer.feed(data)
        taken.append(commands(framer))
    return taken


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

    def test_bare_lf_ends_a_line(self):
        """Normalize mode: pipelined LF-only lines are commands, as CRLF lines are."""
        framer = Framer(2048)
        framer.feed(b"EHLO x\nNOOP\nRSET\r\nQUIT\n")
        self.assertEqual(commands(framer), [b"EHLO x", b"NOOP", b"RSET", b"QUIT"])

    def test_bare_lf_line_refused(self):
        """Reject mode: a line ended by a bare LF is reported, not left waiting."""
        framer = Framer(2048, normalize_lf=False)
        framer.feed(b"EHLO x\nNOOP\r\nRSET\n")
        self.assertEqual(commands(framer), [BARE_LF, b"NOOP", BARE_LF])

    def test_bare_cr_is_not_a_line_end(self):
        for normalize in (True, False):
            framer = Framer(2048, normalize)
            framer.feed(b"NOOP\rRSET\r\r\n")
            self.assertEqual(commands(framer), [b"NOOP\rRSET\r"])

    def test_split_at_every_byte(self):
        """Whatever the chunks, the same commands (a CR at a chunk's end waits for its LF)."""
        stream = b"EHLO x\r\nNOOP\nRSET\r\n\nQUIT\n"
        for normalize in (True, False):
            whole = Framer(2048, normalize)
            whole.feed(stream)
            expected = commands(whole)
            for cut in range(len(stream) + 1):
                framer = Framer(2048, normalize)
                framer.feed(stream[:cut])
                got = commands(framer)
                framer.feed(stream[cut:])
                self.assertEqual(got + commands(framer), expected, cut)

    def test_longest_line(self):
        framer = Framer(10)
        framer.feed(b"x" * 10 + b"\r\n")
        self.assertEqual(commands(framer), [b"x" * 10])

    def test_overlong_line_reported_once_and_skipped(self):
        """A line over the limit is one TOO_LONG; the next line is intact."""
        taken = fed(Framer(10), b"x" * 11, b"y", b"z" * 100000 + b"\r", b"\nNOOP\r\n")
        self.assertEqual(taken, [[], [TOO_LONG], [], [b"NOOP"]])

    def test_overlong_lines_ended_by_lf(self):
        """The limit is on the line without its line end, whichever end it has."""
        for normalize in (True, False):
            framer = Framer(10, normalize)
            framer.feed(b"y" * 10 + b"\r\n" + b"x" * 11 + b"\nNOOP\r\n" + b"z" * 30 + b"\nRSET\r\n")
            self.assertEqual(commands(framer), [b"y" * 10, TOO_LONG, b"NOOP", TOO_LONG, b"RSET"])
        framer = Framer(10)
        framer.feed(b"x" * 10 + b"\n")
        self.assertEqual(commands(framer), [b"x" * 10])

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
    def data(self, *chunks, limit=2048, normalize=True):
        framer = Framer(limit, normalize)
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
            for normalize in (True, False):
                framer = self.data(b"a" + fake + b"MAIL FROM:<x@y.z>\r\n", normalize=normalize)
                data, end = message(framer)
                self.assertFalse(end, fake)

    def test_bare_line_ends_flagged(self):
        """A bare CR always; a bare LF in reject mode."""
        for body, normalize in [(b"a\nb\r\n", False), (b"\n\r\n", False), (b"a\n.\r\n", False),
                                (b"a\rb\r\n", True), (b"a\r\r\n", True), (b"\r\n\r.\n", True)]:
            for mode in {normalize, False}:
                framer = self.data(body, b".\r\n", normalize=mode)
                message(framer)
                self.assertTrue(framer.bare_line_end, (body, mode))

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


def model(stream, normalize, opening=b"\r\n"):
    """
    What the framer must make of data C{stream}, worked out line by line:
    C{(message, bare, rest)}.  The data must end in it.  C{opening} is the
    DATA command's line end.
    """
    out, bare, before, start = [], False, opening, 0
    while True:
        lf = stream.index(b"\n", start)
        line, start = stream[start:lf + 1], lf + 1
        after = b"\r\n" if line.endswith(b"\r\n") else b"\n"
        content = line[:-len(after)]
        if content == b"." and before == after == b"\r\n":
            return b"".join(out), bare, stream[start:]
        bare = bare or b"\r" in content or (after == b"\n" and not normalize)
        out.append((b".." if content == b"." else content) + b"\r\n" if normalize else line)
        before = after


def framed(stream, cuts, normalize, opening=b"\r\n"):
    """Feed C{stream} cut at C{cuts}: C{(message, bare, rest)} as the framer gives them."""
    framer = Framer(2048, normalize)
    framer.feed(b"DATA" + opening)
    assert framer.next_command() == b"DATA"
    framer.start_data()
    got, start = b"", 0
    for cut in sorted(cuts) + [len(stream)]:
        framer.feed(stream[start:cut])
        start = cut
        if framer.in_data:
            got += message(framer)[0]
    assert not framer.in_data
    return got, framer.bare_line_end, framer._buffer


class NormalizeTests(SynchronousTestCase):
    """Bare LF as a line end: CRLF out, lone dots stuffed, the end only at CRLF.CRLF."""

    def assert_framed(self, stream, expected, normalize=True, opening=b"\r\n"):
        """C{stream} gives C{expected} however it is cut into two or three chunks."""
        self.assertEqual(model(stream, normalize, opening), expected)
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                got = framed(stream, [first, second], normalize, opening)
                self.assertEqual(got, expected, (first, second))

    def test_lf_only_message(self):
        self.assert_framed(
            b"Subject: x\nTo: y\n\nbody\n..dot\n.\n\r\n.\r\nQUIT\r\n",
            (b"Subject: x\r\nTo: y\r\n\r\nbody\r\n..dot\r\n..\r\n\r\n", False, b"QUIT\r\n"))

    def test_lone_dots_are_stuffed(self):
        """Every lone dot next to a bare LF, one after another too, keeps its line."""
        self.assert_framed(
            b".\n.\r\n.\n\r\n.\nx\n.\r\n.\r\n",
            (b"..\r\n..\r\n..\r\n\r\n..\r\nx\r\n..\r\n", False, b""))

    def test_only_crlf_dot_crlf_ends(self):
        for lookalike in [b"\r\n.\n", b"\n.\r\n", b"\n.\n"]:
            self.assert_framed(b"a" + lookalike + b"b\r\n.\r\n",
                               (b"a\r\n..\r\nb\r\n", False, b""))

    def test_data_command_ended_by_lf(self):
        """After C{DATA} with a bare LF, a dot line first is a lone dot, not the end."""
        self.assert_framed(b".\r\nx\r\n.\r\n", (b"..\r\nx\r\n", False, b""), opening=b"\n")
        self.assert_framed(b".\r\nx\r\n.\r\n", (b"", False, b"x\r\n.\r\n"))

    def test_bare_cr_refused(self):
        for normalize in (True, False):
            self.assertTrue(framed(b"a\rb\n\r\n.\r\n", [], normalize)[1])
            self.assertTrue(framed(b"a\r\r\n.\r\n", [], normalize)[1])
            self.assertTrue(framed(b"\r\n.\r\r\n.\r\n", [], normalize)[1])

    def test_reject_mode_keeps_the_bytes(self):
        self.assert_framed(b"a\nb\n.\r\n.\r\n", (b"a\nb\n.\r\n", True, b""), normalize=False)

    def test_every_byte_a_chunk(self):
        stream = b"a\n.\n\n..\r\n.x\r\n\n.\n.\r\n\r\n.\r\nNOOP\r\n"
        for normalize in (True, False):
            self.assertEqual(framed(stream, range(len(stream)), normalize),
                             model(stream, normalize))

    def test_long_lf_line_stays_data(self):
        line = b"A" * 100000 + b"\nRSET\n"
        self.assertEqual(framed(line + b"\r\n.\r\n", [5, 50000], True),
                         (b"A" * 100000 + b"\r\nRSET\r\n\r\n", False, b""))

    @given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n", b"\n.", b"\r\n."]),
                    max_size=30),
           st.lists(st.integers(0, 200), max_size=6), st.booleans(), st.booleans())
    def test_any_input_any_chunking(self, parts, cuts, normalize, lf_opening):
        """
        Whatever the input and its chunks: what the line-by-line model says.  In
        normalize mode a message without a bare CR has CRLF line ends only and no
        lone dot that could end the upstream's data.
        """
        stream = b"".join(parts) + b"\r\n.\r\nNOOP\r\n"
        opening = b"\n" if lf_opening and normalize else b"\r\n"
        cuts = [min(cut, len(stream)) for cut in cuts]
        expected = model(stream, normalize, opening)
        got = framed(stream, cuts, normalize, opening)
        self.assertEqual(got[1:], expected[1:])
        if normalize and not got[1]:
            self.assertEqual(got[0], expected[0])
            self.assertNotIn(b"\r", got[0].replace(b"\r\n", b""))
            self.assertNotIn(b"\n", got[0].replace(b"\r\n", b""))
            self.assertNotIn(b"\r\n.\r\n", b"\r\n" + got[0])
        elif not normalize:
            self.assertEqual(got[0], expected[0])
