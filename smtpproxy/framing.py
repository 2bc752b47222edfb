"""
Pure: cut the client's byte stream into command lines and message data.

Twisted's line receiver is not used for the client side because it fights
SMTP's rules in three ways (TWISTED-NOTES fights C, E, F):

 - it keeps executing lines that were pipelined behind STARTTLS;
 - an overlong line in DATA drops the session back into command mode, so
   the rest of the body runs as commands;
 - it hands every line to Python code, which is slow for big messages.

L{Framer} is pulled rather than pushed: the session asks for one command or
one piece of data at a time, so it can stop reading while a reply is
pending (pipelining), switch to data mode after C{354}, and throw away
whatever plaintext is buffered when STARTTLS begins.

In data mode the message is returned in *wire form*: CRLF line ends and
dot-stuffing left as the client sent them.  The proxy relays that form
upstream unchanged, so dots are never unstuffed and stuffed again, and a
chunk boundary can never make the upstream see an end of data.
"""

from attrs import frozen

CRLF = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"

TOO_LONG = object()
"""Returned by L{Framer.next_command} once for each overlong command line."""


@frozen
class DataPiece:
    """
    Message bytes in wire form, and whether they ended the message.

    @ivar data: the message content, possibly empty.  Including the
        final piece, the pieces of one message concatenate to exactly the
        bytes between the C{354} reply and the terminating C{.CRLF}.
    @ivar end: this piece is the last one; the framer is back in command
        mode.
    """

    data: bytes
    end: bool


class LineEndCheck:
    """
    Detect a bare CR or bare LF anywhere in a stream of chunks.

    Such bytes are how SMTP smuggling hides a second message from one
    receiver and shows it to another (SPEC section 2), so a message that
    contains one is refused whole.  A CR at the end of a chunk is held back
    until the next chunk shows whether an LF follows it.
    """

    def __init__(self):
        self.bare = False
        self._pending_cr = False

    def update(self, chunk):
        if self.bare or not chunk:
            return
        if self._pending_cr:
            chunk = b"\r" + chunk
        self._pending_cr = chunk.endswith(b"\r")
        if self._pending_cr:
            chunk = chunk[:-1]
        pairs = chunk.count(CRLF)
        self.bare = chunk.count(b"\r") != pairs or chunk.count(b"\n") != pairs


class Framer:
    """
    The client's input, one command line or one piece of data at a time.

    @param max_line_length: the longest command line accepted, CRLF
        excluded (SPEC: 2048).  A longer line is reported once as
        L{TOO_LONG} and then skipped up to its line end without being
        buffered.
    """

    def __init__(self, max_line_length):
        self._max = max_line_length
        self._buffer = b""
        self._skipping = False
        self._in_data = False
        self._tail = b""
        self._virtual = 0
        self._line_ends = LineEndCheck()

    @property
    def in_data(self):
        return self._in_data

    @property
    def bare_line_end(self):
        """Whether the current (or just finished) message had a bare CR/LF."""
        return self._line_ends.bare

    def feed(self, data):
        self._buffer = self._buffer + data if self._buffer else data

    def discard(self):
        """Forget all buffered input (STARTTLS: RFC 3207 section 4.2)."""
        self._buffer = b""
        self._skipping = False

    def next_command(self):
        """
        The next complete command line without its CRLF, L{TOO_LONG}, or
        L{None} when more input is needed.
        """
        while self._skipping:
            end = self._buffer.find(CRLF)
            if end < 0:
                self._buffer = self._buffer[-1:] if self._buffer.endswith(b"\r") else b""
                return None
            self._buffer = self._buffer[end + 2:]
            self._skipping = False
        end = self._buffer.find(CRLF, 0, self._max + 2)
        if end < 0:
            if len(self._buffer) <= self._max + 1:
                return None
            self._skipping = True
            return TOO_LONG
        line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        return line

    def start_data(self):
        """Switch to data mode: the client has been told C{354}."""
        self._in_data = True
        self._tail = CRLF
        self._virtual = len(CRLF)
        self._line_ends = LineEndCheck()

    def next_data(self):
        """
        The next L{DataPiece}, or L{None} when no input is buffered.

        The data preceding C{354}'s command line ended with CRLF, so the
        marker may be found at the very start: the search runs over an
        invisible CRLF prefix that is never returned.  The last four bytes
        are held back while no marker is found, since they may begin one.
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
            cut = max(len(stream) - (len(END_OF_DATA) - 1), 0)
            self._tail = stream[cut:]
        skip = min(self._virtual, cut)
        self._virtual -= skip
        piece = stream[skip:cut]
        self._line_ends.update(piece)
        return DataPiece(piece, not self._in_data)
