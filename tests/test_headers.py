"""
Tests for L{smtpproxy.headers}: finding, reporting and rewriting the header
block of wire-form message data (docs/protocol.rst sections 2, 3 and 4).
"""

import re
import tracemalloc

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.headers import UNCOUNTED, Budget, Field, HeaderBlock, HeaderReader, HeaderTooLarge


def read(data, max_size=1 << 20):
    """Feed C{data} whole; return the block and the rest of the message."""
    reader = HeaderReader(max_size)
    rest = reader.feed(data)
    if rest is None:
        return reader.finish(), b""
    return reader.block, rest


def read_chunks(chunks, max_size=1 << 20):
    """
    Feed C{chunks} one by one; return the block and everything after it:
    the remainder of the completing chunk followed by the later chunks.
    """
    reader = HeaderReader(max_size)
    for i, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if rest is not None:
            return reader.block, rest + b"".join(chunks[i + 1:])
    return reader.finish(), b""


def api(data):
    return read(data)[0].for_api()


def header(name, value):
    return {"name": name, "value": value}


class ParseTests(SynchronousTestCase):
    """Where the block ends and what the API is told (docs/protocol.rst sections 2, 3)."""

    def test_simple(self):
        block, rest = read(b"From: a@b.c\r\nSubject: hi\r\n\r\nbody\r\n")
        self.assertEqual(block.fields, (
            Field(b"From", b"From: a@b.c\r\n"),
            Field(b"Subject", b"Subject: hi\r\n"),
        ))
        self.assertEqual(bytes(block), b"From: a@b.c\r\nSubject: hi\r\n")
        self.assertEqual(block.raw, bytes(block))
        self.assertEqual(rest, b"\r\nbody\r\n")
        self.assertEqual(block.for_api(), [
            header("From", "a@b.c"), header("Subject", "hi"),
        ])

    def test_folding(self):
        """A CRLF before white space is removed; the white space stays."""
        data = b"Subject: one\r\n two\r\n\tthree\r\nTo:\r\n x@y.z\r\n\r\n"
        block, rest = read(data)
        self.assertEqual(block.fields[0].raw, b"Subject: one\r\n two\r\n\tthree\r\n")
        self.assertEqual(block.for_api(), [
            header("Subject", "one two\tthree"), header("To", "x@y.z"),
        ])
        self.assertEqual(rest, b"\r\n")

    def test_white_space(self):
        """Leading white space goes; trailing white space stays."""
        self.assertEqual(api(b"A:  \t x  \r\nB:x\r\n\r\n"),
                         [header("A", "x  "), header("B", "x")])

    def test_empty_values(self):
        self.assertEqual(api(b"A:\r\nB: \r\nC:\r\n \r\n\r\n"),
                         [header("A", ""), header("B", ""), header("C", "")])

    def test_duplicates(self):
        """Every field is reported, in order, duplicates kept."""
        self.assertEqual(
            api(b"Received: 1\r\nX: a\r\nReceived: 2\r\nx: b\r\n\r\n"),
            [header("Received", "1"), header("X", "a"),
             header("Received", "2"), header("x", "b")])

    def test_obsolete_white_space_before_colon(self):
        """RFC 5322 section 4.5: C{Name  :}; the name is reported without it."""
        block, rest = read(b"Subject \t : hi\r\n\r\n")
        self.assertEqual(block.fields[0].name, b"Subject")
        self.assertEqual(block.for_api(), [header("Subject", "hi")])

    def test_name_characters(self):
        """Any printable ASCII but the colon makes a field name."""
        name = bytes(c for c in range(33, 127) if c != ord(":"))
        self.assertEqual(api(name + b": v\r\n\r\n"), [header(name.decode(), "v")])

    def test_non_header_first_line(self):
        """A message that starts with its body has an empty header block."""
        for data in [b"Hello world\r\nX: y\r\n", b"NoColon\r\n", b": x\r\n",
                     b"\r\nX: y\r\n", b"\xc3\xa9t\xc3\xa9: x\r\n"]:
            block, rest = read(data)
            self.assertEqual((block.fields, rest), ((), data))

    def test_continuation_as_first_line(self):
        """A continuation needs a field before it."""
        for data in [b" X: y\r\n", b"\tX: y\r\n"]:
            block, rest = read(data)
            self.assertEqual((block.fields, rest), ((), data))

    def test_ends_at_non_header_line(self):
        """The first line that is neither field nor continuation ends it."""
        data = b"A: 1\r\nnot a header\r\nB: 2\r\n\r\n"
        block, rest = read(data)
        self.assertEqual(block.raw, b"A: 1\r\n")
        self.assertEqual(rest, b"not a header\r\nB: 2\r\n\r\n")

    def test_dot_stuffed_header_lines(self):
        """
        The wire line C{..X: y} is the header line C{.X: y}; the wire bytes
        are kept. A lone stuffed dot is not a header line.
        """
        block, rest = read(b"..X: y\r\n..\r\nZ: 1\r\n")
        self.assertEqual(block.fields, (Field(b".X", b"..X: y\r\n"),))
        self.assertEqual(block.for_api(), [header(".X", "y")])
        self.assertEqual(rest, b"..\r\nZ: 1\r\n")

    def test_unstuffed_dot(self):
        """
        A client that forgot to stuff: its leading dot is still removed
        (docs/protocol.rst section 2), here and upstream, so C{. x} continues a field.
        """
        block, rest = read(b"A: 1\r\n. 2\r\n.B: 3\r\n.\r\n")
        self.assertEqual(block.for_api(), [header("A", "1 2"), header("B", "3")])
        self.assertEqual(rest, b".\r\n")

    def test_dot_stuffed_value(self):
        """Only a line's first dot is stuffing; a continuation keeps its dots."""
        self.assertEqual(api(b"..A: ..b\r\n .c\r\n\r\n"), [header(".A", "..b .c")])

    def test_utf8(self):
        data = "Subject: Grüße 🙂\r\n\r\n".encode()
        block, rest = read(data)
        self.assertEqual(block.for_api(), [header("Subject", "Grüße 🙂")])
        self.assertEqual(block.raw, data[:-2])

    def test_invalid_utf8(self):
        """Invalid bytes are U+FFFD for the API only; the block keeps them."""
        data = b"Subject: a\xff\xc3b\r\n\r\n"
        block, rest = read(data)
        self.assertEqual(block.for_api(), [header("Subject", "a\ufffd\ufffdb")])
        self.assertEqual(block.raw, data[:-2])

    def test_all_header(self):
        """A message without a body: L{HeaderReader.finish} gives it all."""
        reader = HeaderReader(100)
        self.assertIsNone(reader.feed(b"A: 1\r\n b\r\n"))
        self.assertIsNone(reader.feed(b"B: 2\r\n"))
        block = reader.finish()
        self.assertIs(block, reader.block)
        self.assertEqual(block.raw, b"A: 1\r\n b\r\nB: 2\r\n")
        self.assertEqual(block.for_api(), [header("A", "1 b"), header("B", "2")])

    def test_empty_message(self):
        self.assertEqual(HeaderReader(100).finish(), HeaderBlock(()))

    def test_finish_needs_whole_lines(self):
        reader = HeaderReader(100)
        reader.feed(b"A: 1\r\nB: 2")
        self.assertRaises(ValueError, reader.finish)

    def test_no_use_after_completion(self):
        reader = HeaderReader(100)
        reader.feed(b"A: 1\r\n\r\n")
        self.assertRaises(RuntimeError, reader.feed, b"x")
        self.assertRaises(RuntimeError, reader.finish)
        reader = HeaderReader(100)
        reader.finish()
        self.assertRaises(RuntimeError, reader.feed, b"x")


class ChunkTests(SynchronousTestCase):
    """Chunk boundaries anywhere give the same result."""

    def test_split_between_cr_and_lf(self):
        block, rest = read_chunks([b"A: 1\r", b"\n", b" 2\r", b"\n\r", b"\nbody"])
        self.assertEqual(block.raw, b"A: 1\r\n 2\r\n")
        self.assertEqual(rest, b"\r\nbody")

    def test_one_byte_at_a_time(self):
        data = b"..A : 1\r\n 2\r\nB: 3\r\nbody line\r\n"
        block, rest = read_chunks([bytes([b]) for b in data])
        self.assertEqual(block, read(data)[0])
        self.assertEqual(rest, b"body line\r\n")

    def test_ends_before_the_line_does(self):
        """
        A line is known not to be a field before it ends, and the bytes of it
        already fed come back with the remainder.
        """
        reader = HeaderReader(100)
        self.assertIsNone(reader.feed(b"A: 1\r\nHel"))
        self.assertEqual(reader.feed(b"lo w"), b"Hello w")
        self.assertEqual(reader.block.raw, b"A: 1\r\n")

    def test_remainder_of_completing_chunk(self):
        reader = HeaderReader(100)
        self.assertIsNone(reader.feed(b"A: 1\r\n"))
        self.assertEqual(reader.feed(b"\r\nbody\r\n"), b"\r\nbody\r\n")
        reader = HeaderReader(100)
        self.assertIsNone(reader.feed(b"A: 1\r\n"))
        self.assertEqual(reader.feed(b"\r"), b"\r")

    def test_empty_chunks(self):
        block, rest = read_chunks([b"", b"A: 1\r\n", b"", b"\r\n", b""])
        self.assertEqual((block.raw, rest), (b"A: 1\r\n", b"\r\n"))


class RewriteTests(SynchronousTestCase):
    """The block relayed after the API's changes (docs/protocol.rst section 4)."""

    data = (b"From: a@b.c\r\nX-Tag: 1\r\n more\r\nSubject: hi\r\n"
            b"x-tag: 2\r\n..Dot: d\r\n")

    def setUp(self):
        self.block = read(self.data + b"\r\n")[0]

    def test_unchanged(self):
        self.assertEqual(self.block.rewrite([]), self.data)

    def test_remove(self):
        """Every field of that name goes, any case, continuations with it."""
        self.assertEqual(self.block.rewrite([("X-TAG", None)]),
                         b"From: a@b.c\r\nSubject: hi\r\n..Dot: d\r\n")

    def test_remove_absent(self):
        self.assertEqual(self.block.rewrite([("Nothing", None)]), self.data)

    def test_remove_dot_stuffed(self):
        """A field is named as unstuffed; its stuffing goes with it."""
        self.assertEqual(self.block.rewrite([(".dot", None)]),
                         b"From: a@b.c\r\nX-Tag: 1\r\n more\r\nSubject: hi\r\nx-tag: 2\r\n")

    def test_replace(self):
        """A replaced field moves after the remaining original fields."""
        self.assertEqual(
            self.block.rewrite([("subject", "new")]),
            b"From: a@b.c\r\nX-Tag: 1\r\n more\r\nx-tag: 2\r\n..Dot: d\r\nsubject: new\r\n")

    def test_append(self):
        self.assertEqual(self.block.rewrite([("X-New", "v"), ("X-Empty", "")]),
                         self.data + b"X-New: v\r\nX-Empty: \r\n")

    def test_same_name_twice(self):
        """Removal is of original fields only: both entries are added."""
        self.assertEqual(
            self.block.rewrite([("X-Tag", "a"), ("x-tag", "b")]),
            b"From: a@b.c\r\nSubject: hi\r\n..Dot: d\r\nX-Tag: a\r\nx-tag: b\r\n")

    def test_remove_after_add(self):
        """A later null entry does not remove what an earlier entry adds."""
        self.assertEqual(
            self.block.rewrite([("Subject", "x"), ("Subject", None)]),
            b"From: a@b.c\r\nX-Tag: 1\r\n more\r\nx-tag: 2\r\n..Dot: d\r\nSubject: x\r\n")

    def test_order(self):
        self.assertEqual(
            self.block.rewrite([("B", "2"), ("From", None), ("A", "1")]),
            b"X-Tag: 1\r\n more\r\nSubject: hi\r\nx-tag: 2\r\n..Dot: d\r\nB: 2\r\nA: 1\r\n")

    def test_added_line_dot_stuffed(self):
        """The output is wire form: an added line starting with a dot is stuffed."""
        self.assertEqual(HeaderBlock(()).rewrite([(".X", ".v")]), b"..X: .v\r\n")
        self.assertEqual(HeaderBlock(()).rewrite([("X", ".v")]), b"X: .v\r\n")

    def test_utf8_value(self):
        self.assertEqual(HeaderBlock(()).rewrite([("X", "é")]), b"X: \xc3\xa9\r\n")

    def test_invalid_bytes_kept(self):
        block = read(b"A: \xff\r\nB: 1\r\n\r\n")[0]
        self.assertEqual(block.rewrite([("B", "2")]), b"A: \xff\r\nB: 2\r\n")


class SizeLimitTests(SynchronousTestCase):
    """C{--max_header_size} (docs/protocol.rst section 2)."""

    def test_exactly_at_limit(self):
        data = b"A: " + b"x" * 95 + b"\r\n"
        self.assertEqual(len(data), 100)
        block, rest = read(data + b"\r\n" + b"b" * 1000, max_size=100)
        self.assertEqual(block.raw, data)
        reader = HeaderReader(100)
        reader.feed(data)
        self.assertEqual(reader.finish().raw, data)

    def test_over_limit_in_one_chunk(self):
        data = b"A: " + b"x" * 96 + b"\r\n\r\nbody\r\n"
        self.assertRaises(HeaderTooLarge, HeaderReader(100).feed, data)

    def test_over_limit_in_many_fields(self):
        data = b"A: 1\r\n" * 17 + b"\r\n"
        self.assertRaises(HeaderTooLarge, read, data, 101)
        self.assertEqual(len(read(data, 102)[0].raw), 102)

    def test_over_limit_byte_by_byte(self):
        """Raised on the first byte past the limit: nothing more is buffered."""
        reader = HeaderReader(100)
        data = b"A: 1\r\n" + b"B: " + b"x" * 200
        for b in data[:100]:
            self.assertIsNone(reader.feed(bytes([b])))
        self.assertRaises(HeaderTooLarge, reader.feed, data[100:101])

    def test_over_limit_in_small_chunks(self):
        reader = HeaderReader(1000)
        chunks = [b"X-%d: %s\r\n" % (i, b"v" * 20) for i in range(100)]
        with self.assertRaises(HeaderTooLarge):
            for chunk in chunks:
                reader.feed(chunk)

    def test_long_body(self):
        """The limit is on the header block only."""
        block, rest = read(b"A: 1\r\n\r\n" + b"x" * 1000, max_size=10)
        self.assertEqual(len(rest), 1002)

    def test_long_first_body_line(self):
        """A long line known not to be a field is not held back."""
        reader = HeaderReader(10)
        self.assertEqual(reader.feed(b"A: 1\r\nno header"), b"no header")

    def test_long_continuation(self):
        """A continuation line is header however it ends."""
        self.assertRaises(HeaderTooLarge, HeaderReader(10).feed, b"A: 1\r\n" + b" x" * 100)

    def test_undecided_line_counts(self):
        """
        A line of name characters may still be a field, so it counts until
        a byte shows it is not; the verdict is the same whole or in chunks.
        """
        reader = HeaderReader(10)
        self.assertIsNone(reader.feed(b"A: 1\r\nLong"))
        self.assertRaises(HeaderTooLarge, reader.feed, b"Name")
        self.assertRaises(HeaderTooLarge, read, b"A: 1\r\nLongName word\r\n", 10)
        self.assertEqual(read(b"A: 1\r\nLon word\r\n", 10)[1], b"Lon word\r\n")


# A valid wire-form message: lines without CR or LF, stuffed, each ending
# in CRLF, mixing header-like lines with anything else.
_name = st.binary(min_size=1, max_size=6).map(
    lambda b: bytes(33 + c % 94 for c in b).replace(b":", b"x"))
_text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_field = st.builds(lambda n, w, v: n + w + b":" + v,
                   _name, st.sampled_from([b"", b" ", b" \t"]), _text)
_continuation = st.builds(bytes.__add__, st.sampled_from([b" ", b"\t"]), _text)
_folded = st.builds(lambda first, more: [first, *more],
                    _field, st.lists(_continuation, max_size=2))
_line = st.one_of(_field, _continuation, st.sampled_from([b"", b"."]), _text)
_message = st.builds(lambda fields, lines: sum(fields, []) + lines,
                     st.lists(_folded, max_size=6), st.lists(_line, max_size=8)).map(
    lambda lines: b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                           for line in lines))


def _chunked(data, draw):
    cuts = sorted(draw(st.sets(st.integers(0, len(data)))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def _reference(data):
    """The block's fields and the rest, read line by line as docs/protocol.rst section 2 says."""
    fields, size = [], 0
    for line in re.findall(rb".*?\r\n", data, re.DOTALL):
        text = line.removeprefix(b".")
        match = re.match(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:", text)
        if match:
            fields.append(Field(match.group(1), line))
        elif text[:1] in (b" ", b"\t") and fields:
            fields[-1] = Field(fields[-1].name, fields[-1].raw + line)
        else:
            break
        size += len(line)
    return tuple(fields), data[size:]


class PropertyTests(SynchronousTestCase):
    @given(_message, st.data())
    @settings(deadline=None)
    def test_any_chunking(self, data, draw):
        """
        Any chunking gives the block and rest of feeding it whole, which are
        those of a line-by-line reading, and they add up to the input.
        """
        block, rest = read_chunks(_chunked(data, draw.draw))
        self.assertEqual((block, rest), read(data))
        self.assertEqual((block.fields, rest), _reference(data))
        self.assertEqual(block.raw + rest, data)

    @given(_message)
    def test_rewrite_nothing(self, data):
        block = read(data)[0]
        self.assertEqual(block.rewrite([]), block.raw)
        self.assertTrue(data.startswith(block.rewrite([])))

    @given(st.binary(max_size=200), st.integers(0, 100), st.data())
    @settings(deadline=None)
    def test_arbitrary_bytes(self, data, max_size, draw):
        """
        Any bytes in any chunks raise nothing but L{HeaderTooLarge}, the
        verdict does not depend on the chunking, and nothing is lost.
        """
        chunks = _chunked(data, draw.draw)
        try:
            whole = read_chunks([data], max_size)
        except (HeaderTooLarge, ValueError) as e:
            whole = type(e)
        try:
            chunked = read_chunks(chunks, max_size)
        except (HeaderTooLarge, ValueError) as e:
            chunked = type(e)
        self.assertEqual(whole, chunked)
        if whole is ValueError:
            self.assertFalse(data.endswith(b"\r\n"))
        elif whole is not HeaderTooLarge:
            block, rest = whole
            self.assertEqual(block.raw + rest, data)
            self.assertLessEqual(len(block.raw), max_size)
            self.assertEqual(block.rewrite([]), block.raw)
            block.for_api()


class HeaderMemoryTests(SynchronousTestCase):
    def test_incomplete_block_costs_its_size_once(self):
        """What a client that never ends its header block makes the proxy hold."""
        line = b"X-Filler: " + b"a" * 60 + b"\r\n"
        reader = HeaderReader(2 * 1024 * 1024)
        tracemalloc.start()
        try:
            for _ in range(1024 * 1024 // 4096):
                self.assertIsNone(reader.feed(line * (4096 // len(line))))
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(held, 1.5 * 1024 * 1024)


class BudgetTests(SynchronousTestCase):
    def test_the_first_bytes_of_each_block_are_free(self):
        budget = Budget(1000)
        self.assertTrue(budget.take(0, UNCOUNTED))
        self.assertEqual(budget.used, 0)
        self.assertTrue(budget.take(UNCOUNTED, 1000))
        self.assertFalse(budget.take(UNCOUNTED + 1000, 1))
        self.assertTrue(budget.take(0, UNCOUNTED))  # another block's first bytes
        budget.give(UNCOUNTED + 1000)
        self.assertEqual(budget.used, 0)
