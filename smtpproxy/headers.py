# -*- test-case-name: tests.test_headers -*-
"""
Pure: the header block at the start of a message, read and rewritten in
SMTP wire form.

The proxy keeps DATA in wire form (CRLF line ends, dot-stuffed, RFC 5321
section 4.5.2; see L{smtpproxy.framing}) and relays it upstream that way,
so the body is never unstuffed or re-stuffed. This module only looks
through the stuffing to recognise header lines, keeps their exact bytes,
and stuffs the lines it adds itself.
"""

import enum
import re
from array import array

from attrs import frozen

# RFC 5322 section 3.6.8: a field name is printable ASCII except the colon;
# section 4.5 (obsolete syntax) allows white space between name and colon.
_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]*")
_WSP = re.compile(rb"[ \t]*")
# RFC 5322 section 2.2.3: unfolding removes each CRLF before white space.
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_STUFFING = re.compile(rb"(?:\A|(?<=\r\n))\.")
_ENVELOPE = b"From "


def _unstuffed(wire):
    """RFC 5321 section 4.5.2: the leading dot of each wire line is stuffing."""
    return _STUFFING.sub(b"", wire)


def _stuffed(line):
    """RFC 5321 section 4.5.2: a line that starts with a dot gets another."""
    return b"." + line if line.startswith(b".") else line


class HeaderTooLarge(Exception):
    """The header block is over C{--max_header_size} (docs/protocol.rst section 2)."""


@frozen
class Field:
    """
    One header field: its name as sent (white space before the colon
    removed) and the exact wire bytes of all its lines, CRLFs included.
    """

    name: bytes
    raw: bytes

    @property
    def value(self):
        """
        The value as docs/protocol.rst section 3 gives it to the API: unfolded, without
        leading white space or the final CRLF.
        """
        value = _unstuffed(self.raw).partition(b":")[2].removesuffix(b"\r\n")
        return _FOLD.sub(b"", value).lstrip(b" \t")


@frozen
class HeaderBlock:
    """The header fields of a message, in order, duplicates kept."""

    fields: tuple[Field, ...]

    @property
    def raw(self):
        """The exact wire bytes of the block."""
        return b"".join(field.raw for field in self.fields)

    def __bytes__(self):
        return self.raw

    def for_api(self):
        """
        The C{headers} list of the policy API request (docs/protocol.rst section 3).
        Invalid UTF-8 becomes U+FFFD here only; the relayed bytes keep it.
        """
        return [
            {"name": field.name.decode("ascii"),
             "value": field.value.decode("utf-8", "replace")}
            for field in self.fields
        ]

    def rewrite(self, changes):
        """
        The block to relay, in wire form, after the API's C{changes}, a
        sequence of C{(name, value or None)} (docs/protocol.rst section 4): every field
        named in C{changes} (ASCII case-insensitively) is removed, then each
        entry with a value is appended in order. Appending after removing
        means two entries with one name both appear.
        """
        changes = [(name.encode("ascii"), value) for name, value in changes]
        removed = {name.lower() for name, _ in changes}
        kept = [field.raw for field in self.fields if field.name.lower() not in removed]
        added = [
            _stuffed(b"%s: %s\r\n" % (name, value.encode("utf-8")))
            for name, value in changes if value is not None
        ]
        return b"".join(kept + added)


class _Line(enum.Enum):
    FIELD = "field"
    CONTINUATION = "continuation"
    END = "end"


class HeaderReader:
    """
    Finds the header block at the start of wire-form message data fed in
    chunks of any size.

    docs/protocol.rst section 2: the block ends at the first empty line or the first line
    that is neither a field nor a continuation of one, and that line is the
    start of the rest of the message. A line's kind is known from its first
    bytes (up to the colon), so the block can end before the line does, and
    nothing past the block is held back.

    Size: a line that may still turn out to be a field counts as header until
    the byte that shows otherwise. This keeps the buffer within C{max_size}
    plus one chunk even if a line of name characters never ends, and gives
    the same verdict however the data is chunked.

    Positions in the buffer are remembered between chunks, so the cost stays
    linear in the data however small the chunks are.  Fields are kept as
    positions too, and cut out of the buffer only when the block completes:
    an incomplete block, all an attacker who never ends it can make the
    proxy hold, costs its own size once.

    A first line starting C{From } (an mbox envelope line some clients and
    scripts leave in front of the message) is dropped, not taken as the end
    of an empty block: otherwise the real header fields would go to the API
    as none and upstream as body.  Dropped rather than kept as a header: it
    is no header field (no colon), it names nothing the envelope does not,
    and kept in front of the block, an upstream that reads it as the end of
    the headers (as this reader would) would see a different block than the
    API did.  It counts toward C{max_size}, so it cannot double what one
    message may hold.

    @ivar envelope_line: the dropped line, or C{None}.
    """

    def __init__(self, max_size):
        self.max_size = max_size
        self.block = None
        self.envelope_line = None
        self._buf = bytearray()
        self._fields = array("I")  # start, name end, end of each field read
        self._field = None  # (start, name end) of the field being read
        self._line = 0  # start of the line being read
        self._kind = None  # its kind, once known
        self._name_end = None  # the end of its field name, once known
        self._pos = 0  # how far it has been read
        self._scanned = 0  # how far a leading From line was searched for its end

    def feed(self, data):
        """
        Add C{data}. Return None while the block is incomplete; when it
        completes, return everything fed after it (possibly C{b""}) and set
        C{self.block}. Raise L{HeaderTooLarge} as soon as the block is over
        C{max_size} bytes, counting as the class docstring says.
        """
        self._check_open()
        self._buf += data
        if not self._drop_envelope_line():
            if len(self._buf) > self.max_size:
                raise HeaderTooLarge(f"header block over {self.max_size} bytes")
            return None
        kind = self._advance()
        extent = self._pos if kind is _Line.END else len(self._buf)
        if extent + len(self.envelope_line or b"") > self.max_size:
            raise HeaderTooLarge(f"header block over {self.max_size} bytes")
        if kind is None:
            return None
        remainder = bytes(self._buf[self._line:])
        self._complete()
        return remainder

    def finish(self):
        """
        The block of a message that is all header (RFC 5322 section 3.5:
        the body is optional), at the end of data that never completed it.
        DATA content ends in CRLF, so the buffered data is whole lines.
        """
        self._check_open()
        if self._line != len(self._buf):
            raise ValueError("message data must end with CRLF")
        self._complete()
        return self.block

    def _drop_envelope_line(self):
        """
        Drop a first line that starts C{From }; return whether the buffer
        shows by now that there is no such line or has dropped it.
        """
        if self.envelope_line is not None or self._line or self._pos:
            return True
        start = bytes(self._buf[:len(_ENVELOPE)])
        if not _ENVELOPE.startswith(start):
            return True
        eol = self._buf.find(b"\r\n", self._scanned)
        if len(start) < len(_ENVELOPE) or eol < 0:
            self._scanned = max(len(self._buf) - 1, 0)  # a line fed byte by byte is read once
            return False
        self.envelope_line = bytes(self._buf[:eol + 2])
        del self._buf[:eol + 2]
        return True

    def _check_open(self):
        if self.block is not None:
            raise RuntimeError("the header block is already complete")

    def _advance(self):
        """
        Read lines as far as the buffer goes; return L{_Line.END} once the
        line that ends the block is recognised, else None.
        """
        buf = self._buf
        while True:
            if self._kind is None:
                self._kind = self._classify()
                if self._kind in (None, _Line.END):
                    return self._kind
                if self._kind is _Line.FIELD:
                    self._close_field()
                    self._field = (self._line, self._name_end)
            eol = buf.find(b"\r\n", self._pos)
            if eol < 0:
                self._pos = len(buf) - 1  # a final CR may start the CRLF
                return None
            self._line = self._pos = eol + 2
            self._kind = self._name_end = None

    def _classify(self):
        """
        The kind of the current line as far as its bytes so far show, or
        None; leaves C{self._pos} at the byte that decided it, or where the
        bytes ran out.
        """
        buf = self._buf
        start = self._line + buf.startswith(b".", self._line)
        if start >= len(buf):
            return None
        if buf[start] in b" \t":
            self._pos = start
            return _Line.CONTINUATION if self._field else _Line.END
        if self._name_end is None:
            self._pos = _NAME.match(buf, max(self._pos, start)).end()
            if self._pos == start:
                return _Line.END
            if self._pos == len(buf):
                return None
            self._name_end = self._pos
        self._pos = _WSP.match(buf, self._pos).end()
        if self._pos == len(buf):
            return None
        return _Line.FIELD if buf[self._pos] == ord(":") else _Line.END

    def _close_field(self):
        if self._field:
            self._fields.extend((*self._field, self._line))

    def _complete(self):
        self._close_field()
        positions = iter(self._fields)
        with memoryview(self._buf) as buf:
            fields = tuple(
                Field(_unstuffed(bytes(buf[start:name_end])), bytes(buf[start:end]))
                for start, name_end, end in zip(positions, positions, positions)
            )
        self.block = HeaderBlock(fields)
        self._buf = self._fields = self._field = None


UNCOUNTED = 8192
"""
The first bytes of each header block that L{Budget} does not count.  Real
header blocks are a few KiB, so clients that fill the budget with blocks
that never end do not refuse everybody else's mail; what that adds is
bounded too: C{--max_connections} times this (8 MiB at the defaults).
"""


class Budget:
    """
    The bytes of header data all messages may hold in memory at once
    (C{--header_memory}): a header block is held whole until the policy
    API is asked, so without a global bound many clients that never end
    theirs could make the proxy hold C{--max_connections} times
    C{--max_header_size}.  The first L{UNCOUNTED} bytes of each block are
    free.
    """

    def __init__(self, limit):
        self.limit = limit
        self.used = 0

    def take(self, held, size):
        """
        A block holding C{held} bytes grows by C{size}: whether the budget
        allows it (and then counts it).
        """
        counted = _counted(held + size) - _counted(held)
        if self.used + counted > self.limit:
            return False
        self.used += counted
        return True

    def give(self, held):
        """A block that held C{held} bytes is gone."""
        self.used -= _counted(held)


def _counted(held):
    return max(0, held - UNCOUNTED)
