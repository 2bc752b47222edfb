# -*- test-case-name: tests.test_framing -*-
"""
Pure: cut the client's byte stream into command lines and message data.

Twisted's line receiver is not used for the client side because it fights
SMTP's rules in three ways (docs/twisted.rst fights C, E, F):

 - it keeps executing lines that were pipelined behind STARTTLS;
 - an overlong line in DATA drops the session back into command mode, so
   the rest of the body runs as commands;
 - it hands every line to Python code, which is slow for big messages.

L{Framer} is pulled rather than pushed: the session asks for one command or
one piece of data at a time, so it can stop reading while a reply is
pending (pipelining), switch to data mode after C{354}, and throw away
whatever plaintext is buffered when STARTTLS begins.

In data mode the message is returned in *wire form*: CRLF line ends and
dot-stuffing as the client sent them.  The proxy relays that form upstream,
so dots are never unstuffed and stuffed again, and a chunk boundary can
never make the upstream see an end of data.

Bare line ends: a CR that is not followed by LF is never a line end, and a
message that has one is refused whole, since such bytes are how SMTP
smuggling hides a second message from one receiver and shows it to another.
A bare LF depends on the mode.  With C{normalize} (the default, as Postfix
3.9's C{smtpd_forbid_bare_newline=normalize}) a bare LF ends a command line
or a data line as CRLF does, and the data is returned with a CRLF in its
place; yet only a real CRLF.CRLF ends the data, so the proxy and the
upstream (which only ever sees CRLF) agree on where the message ends.  A
line of data that came with a bare LF on either side keeps its dots as sent
(its dot-stuffing reads as that of any line), except a line that is a lone
dot: after normalisation it would end the upstream's data, so it gets the
extra dot and arrives as the one-dot line it was.  With C{reject} a bare LF
ends a command line only to have it refused, and a message with one is
refused whole, as one with a bare CR.
"""

from attrs import frozen

CR, LF = b"\r", b"\n"
CRLF = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"
_LONE_DOT = b"\r\n.\r\n"
_STUFFED_DOT = b"\r\n..\r\n"
_DOT_LINE = b".\r\n"
_DOT_OPENING = b"\n."

TOO_LONG = object()
"""Returned by L{Framer.next_command} once for each overlong command line."""

BARE_LF = object()
"""Returned by L{Framer.next_command}, in reject mode, for a line ended by a bare LF."""


@frozen
class DataPiece:
    """
    Message bytes in wire form, and whether they ended the message.

    @ivar data: the message content, possibly empty.  Including the
        final piece, the pieces of one message concatenate to the bytes
        between the C{354} reply and the terminating C{.CRLF}, with bare
        LFs normalised (see the module docstring).
    @ivar end: this piece is the last one; the framer is back in command
        mode.
    """

    data: bytes
    end: bool


def normalized(piece, line_start):
    """
    C{piece} with each bare LF made CRLF and each lone-dot line stuffed.

    @param line_start: C{piece} starts a line, so a lone dot may open it.
    @return: the normalised bytes.  The piece must not end inside a line
        that may be a lone dot, nor between a CR and an LF: L{Framer}
        holds such bytes back.  A lone-dot line whose line ends on both
        sides were CRLF is the end of data, never inside a piece.
    """
    wire = piece.replace(CRLF, LF).replace(LF, CRLF)
    if line_start:
        wire = CRLF + wire
    # One pass misses every second of consecutive lone dots (they share a
    # CRLF); after it no two unstuffed ones are neighbours.
    wire = wire.replace(_LONE_DOT, _STUFFED_DOT).replace(_LONE_DOT, _STUFFED_DOT)
    return wire[len(CRLF):] if line_start else wire


class Framer:
    """
    The client's input, one command line or one piece of data at a time.

    @param max_line_length: the longest command line accepted, its line end
        excluded (docs/protocol.rst: 2048).  A longer line is reported once as
        L{TOO_LONG} and then skipped up to its line end without being
        buffered.
    @param normalize_lf: take a bare LF as a line end (the C{normalize}
        mode of the module docstring), else refuse it (C{reject}).
    """

    def __init__(self, max_line_length, normalize_lf=True):
        self._max = max_line_length
        self._normalize = normalize_lf
        self._buffer = b""
        self._skipping = False
        self._line_end = CRLF
        self._in_data = False
        self._tail = b""
        self._context = 0
        self._after_bare_lf = False
        self._bare = False

    @property
    def in_data(self):
        return self._in_data

    @property
    def bare_line_end(self):
        """
        Whether the current (or just finished) message had a line end it
        must be refused for: a bare CR, or in reject mode a bare LF.
        """
        return self._bare

    def feed(self, data):
        self._buffer = self._buffer + data if self._buffer else data

    def discard(self):
        """Forget all buffered input (STARTTLS: RFC 3207 section 4.2)."""
        self._buffer = b""
        self._skipping = False

    def next_command(self):
        """
        The next complete command line without its line end, L{TOO_LONG},
        L{BARE_LF}, or C{None} when more input is needed.

        An LF ends a line in both modes, so a client that ends its lines
        with a bare LF is answered at once rather than left waiting.
        """
        while self._skipping:
            end = self._buffer.find(LF)
            if end < 0:
                self._buffer = b""
                return None
            self._buffer = self._buffer[end + 1:]
            self._skipping = False
        end = self._buffer.find(LF, 0, self._max + 2)
        if end < 0:
            if len(self._buffer) <= self._max + 1:
                return None
            self._skipping = True
            return TOO_LONG
        line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
        self._line_end = CRLF if line.endswith(CR) else LF
        if self._line_end == CRLF:
            line = line[:-1]
        if len(line) > self._max:
            return TOO_LONG
        if self._line_end == LF and not self._normalize:
            return BARE_LF
        return line

    def start_data(self):
        """
        Switch to data mode: the client has been told C{354}.

        The line end of the C{DATA} command is kept as context: it starts
        the first line, and if it was a real CRLF, a dot line right after it
        ends an empty message.
        """
        self._in_data = True
        self._tail = self._line_end
        self._context = len(self._line_end)
        self._after_bare_lf = self._line_end == LF
        self._bare = False

    def next_data(self):
        """
        The next L{DataPiece}, or C{None} when no input is buffered.

        The stream searched for the marker starts with context bytes that
        were already returned (or, at first, the C{DATA} line end), so a
        marker right at the start of new input is found, and whether a LF
        is bare or a dot starts a line can be told.  While no marker is
        found, the last four bytes are held back, since they may begin one,
        and so are a final CR (its LF may follow) and a dot that starts a
        line (it may be a lone dot).
        """
        if not (self._in_data and self._buffer):
            return None
        stream = self._tail + self._buffer
        self._buffer = b""
        found = stream.find(END_OF_DATA)
        if found >= 0:
            cut, self._buffer = found + len(CRLF), stream[found + len(END_OF_DATA):]
            self._tail = b""
            self._in_data = False
        else:
            cut = len(stream) - (len(END_OF_DATA) - 1)
            cut -= stream.endswith(CR, 0, cut)
            cut -= stream.endswith(_DOT_OPENING, 0, cut)
            if cut <= self._context:
                self._tail = stream
                return DataPiece(b"", False)
            self._tail = stream[cut - 1:]
        start, self._context = self._context, 1
        piece = stream[start:cut]
        data = self._check(piece, stream.endswith(LF, 0, start))
        self._after_bare_lf = piece.endswith(LF) and not piece.endswith(CRLF)
        return DataPiece(data, not self._in_data)

    def _check(self, piece, line_start):
        """
        Record a forbidden line end in C{piece}; the piece as it must be
        relayed.  Counting in C bytes methods keeps a clean piece cheap: it
        needs normalising only if it has a bare LF, or if it opens with a
        lone dot whose line began after the previous piece's bare LF.
        """
        if self._bare:
            return piece
        pairs = piece.count(CRLF)
        bare_lf = piece.count(LF) != pairs
        self._bare = piece.count(CR) != pairs or (bare_lf and not self._normalize)
        if not self._bare and (bare_lf or self._after_bare_lf and piece.startswith(_DOT_LINE)):
            return normalized(piece, line_start)
        return piece
