"""
The load generator: full SMTP submission sessions, as a mail client does them.

Each session is connect, EHLO, STARTTLS, EHLO, AUTH PLAIN (initial
response), then for each message MAIL, RCPT (one per recipient), DATA, the
message, the final dot, and at the end QUIT.  Against the sink baseline
(``--plain``) the session skips STARTTLS and AUTH, which smtp-sink does not
offer: the baseline is the ceiling of this client and the sink, not a TLS
figure.

Why asyncio and lock-step commands: one process holds hundreds of sessions
at little cost, and waiting for every reply before the next command is what
the slowest common client does; both proxies are driven the same way, so no
one benefits from pipelining the other does not support as well.

Per-message latency is the time from sending MAIL to reading the reply to
the final dot: what a client waits for one message once its session is
up.  Connection set-up (TCP, TLS, AUTH) is in the throughput figure, not in
the latency.

Messages are plain text, 76-character lines, in wire form (no line starts
with a dot, so no stuffing is needed).  Big messages are never held in
memory: a 64 KiB block of lines is written again and again, so a 1 GiB
message costs the client no more memory than a 1 MB one.

Run as a program it prints one JSON object (see L{main}); the runner starts
one or more of these processes and merges their results.  ``--idle`` holds
the sessions open after AUTH instead of sending mail (scenario S5) until a
line (or end of file) arrives on standard input.
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import ssl
import sys
import time

BLOCK = 64 * 1024


class ReplyError(Exception):
    """The server answered something other than what the step expects."""

    def __init__(self, step, line):
        super().__init__(f"{step}: {line[:80]!r}")
        self.step = step
        self.line = line


def _line(n):
    """A 76-character body line (CRLF excluded) that varies, as text does."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 "
    start = (n * 7) % len(alphabet)
    text = (alphabet * 3)[start:start + 76]
    return text


class Message:
    """
    One message of C{size} bytes (data only, the final dot excluded) for
    C{recipients} recipients, produced as a sequence of writes.
    """

    def __init__(self, size, recipients):
        self.recipients = [f"rcpt{i}@example.net" for i in range(recipients)]
        to = ", ".join(f"<{r}>" for r in self.recipients[:20])
        self.header = (
            "From: Bench Sender <sender@example.com>\r\n"
            f"To: {to}\r\n"
            "Subject: smtpproxy benchmark message\r\n"
            "Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <{id}@bench.example.com>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
        )
        self.size = size
        lines = b"".join(_line(n) + b"\r\n" for n in range(BLOCK // 78 + 1))
        self._block = lines[:BLOCK - BLOCK % 78]  # whole lines only
        self._small = None
        body = max(size - len(self.header.format(id="x" * 24).encode()), 0)
        if body <= 4 * BLOCK:
            self._small = self._body(body)

    def _body(self, n):
        """C{n} bytes of body in whole CRLF lines (one byte less if n % 78 == 1)."""
        return self._block * (n // len(self._block)) + self._tail(n % len(self._block))

    def _tail(self, n):
        """Whole 78-byte lines, then one shorter line: C{n} bytes in all."""
        lines, rest = divmod(n, 78)
        tail = self._block[:lines * 78]
        if rest >= 2:
            tail += b"y" * (rest - 2) + b"\r\n"
        return tail

    def pieces(self, number):
        """The writes for message C{number}: header, body blocks, final dot."""
        header = self.header.format(id=f"{os.getpid():08d}.{number:015d}").encode()
        yield header
        body = max(self.size - len(header), 0)
        if self._small is not None:
            yield self._small
        else:
            full, rest = divmod(body, len(self._block))
            for _ in range(full):
                yield self._block
            yield self._tail(rest)
        yield b".\r\n"


class Watchdog:
    """
    Abort a session that makes no progress for C{timeout} seconds, so that
    a lost connection (for instance one dropped from a full accept queue,
    which the client still believes established) becomes an error instead
    of a hang.  One timer per session, pushed back at every reply and every
    write the server has taken.
    """

    def __init__(self, transport, timeout):
        self._transport = transport
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self.fired = False
        self._handle = self._loop.call_later(timeout, self._fire)

    def _fire(self):
        self.fired = True
        self._transport.abort()

    def kick(self):
        self._handle.cancel()
        self._handle = self._loop.call_later(self._timeout, self._fire)

    def cancel(self):
        self._handle.cancel()


async def _reply(reader, step, expect):
    """Read one (possibly multi-line) reply and check its code."""
    watchdog = getattr(reader, "watchdog", None)
    if watchdog is not None:
        watchdog.kick()
    while True:
        line = await reader.readline()
        if not line:
            raise ReplyError(step, b"timed out" if watchdog and watchdog.fired
                             else b"connection closed")
        if line[3:4] != b"-":
            break
    if not line.startswith(expect):
        raise ReplyError(step, line)
    return line


async def _command(reader, writer, line, step, expect):
    writer.write(line)
    return await _reply(reader, step, expect)


class Client:
    """Sessions against one server, with the options of the command line."""

    def __init__(self, args):
        self.args = args
        self.message = Message(args.size, args.recipients)
        self.ok = 0
        self.errors = {}
        self.latencies = []
        self.tls = None
        self._number = 0
        self._ctx = None
        if not args.plain:
            self._ctx = ssl.create_default_context(cafile=args.ca)
        token = base64.b64encode(b"\0bench@example.com\0secret-password").decode()
        self._auth = f"AUTH PLAIN {token}\r\n".encode()

    def _error(self, error):
        key = str(error) if isinstance(error, ReplyError) else type(error).__name__
        self.errors[key] = self.errors.get(key, 0) + 1

    async def open(self):
        """Connect and get to an authenticated session: (reader, writer)."""
        a = self.args
        reader, writer = await asyncio.open_connection(a.host, a.port, limit=1 << 20)
        reader.watchdog = Watchdog(writer.transport, a.timeout)
        try:
            await _reply(reader, "greeting", b"220")
            await _command(reader, writer, b"EHLO bench.example.com\r\n", "EHLO", b"250")
            if not a.plain:
                await _command(reader, writer, b"STARTTLS\r\n", "STARTTLS", b"220")
                await writer.start_tls(self._ctx, server_hostname="localhost")
                if self.tls is None:
                    ssl_object = writer.get_extra_info("ssl_object")
                    self.tls = f"{ssl_object.version()} {ssl_object.cipher()[0]}"
                await _command(reader, writer, b"EHLO bench.example.com\r\n", "EHLO", b"250")
                await _command(reader, writer, self._auth, "AUTH", b"235")
        except BaseException:
            writer.transport.abort()
            reader.watchdog.cancel()
            raise
        return reader, writer

    async def send(self, reader, writer):
        """One message on an open session; its latency is recorded."""
        self._number += 1
        started = time.monotonic()
        await _command(reader, writer, b"MAIL FROM:<sender@example.com>\r\n", "MAIL", b"250")
        for recipient in self.message.recipients:
            await _command(reader, writer, f"RCPT TO:<{recipient}>\r\n".encode(), "RCPT", b"250")
        await _command(reader, writer, b"DATA\r\n", "DATA", b"354")
        # Like smtplib, small messages go in one write with the final dot, and
        # the dot never goes alone: a lone small write invites a Nagle /
        # delayed-ACK stall that says more about the client than the proxy.
        pending = b""
        for piece in self.message.pieces(self._number):
            if len(pending) >= BLOCK:
                writer.write(pending)
                await writer.drain()
                reader.watchdog.kick()
                pending = b""
            pending += piece
        writer.write(pending)
        await _reply(reader, "final dot", b"250")
        self.latencies.append((time.monotonic() - started) * 1000)
        self.ok += 1

    async def session(self):
        reader = writer = None
        try:
            reader, writer = await self.open()
            for _ in range(self.args.per_connection):
                await self.send(reader, writer)
            await _command(reader, writer, b"QUIT\r\n", "QUIT", b"221")
        except (OSError, ssl.SSLError, ReplyError, asyncio.IncompleteReadError) as e:
            self._error(e)
        finally:
            if writer is not None:
                writer.transport.abort()
                reader.watchdog.cancel()

    async def run(self):
        """C{count} sessions, C{concurrency} at a time, within C{--deadline}."""
        a = self.args
        sessions = -(-a.count // a.per_connection)
        deadline = time.monotonic() + a.deadline
        self.capped = False

        async def worker():
            nonlocal sessions
            while sessions > 0:
                if time.monotonic() > deadline:
                    self.capped = True
                    return
                sessions -= 1
                await self.session()

        await asyncio.gather(*(worker() for _ in range(min(a.concurrency, sessions))))

    async def idle(self):
        """
        S5: open C{count} authenticated sessions and hold them until told
        (a line on stdin), then QUIT them all.
        """
        a = self.args
        sessions = []
        todo = a.count

        async def opener():
            nonlocal todo
            while todo > 0:
                todo -= 1
                try:
                    reader, writer = await self.open()
                    reader.watchdog.cancel()  # idle on purpose until told
                    sessions.append((reader, writer))
                except (OSError, ssl.SSLError, ReplyError) as e:
                    self._error(e)

        await asyncio.gather(*(opener() for _ in range(min(a.concurrency, a.count))))
        self.ok = len(sessions)
        print(json.dumps({"ready": len(sessions), "errors": self.errors}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        # Every session must still be alive: NOOP checks that, then QUIT.
        for reader, writer in sessions:
            try:
                await _command(reader, writer, b"NOOP\r\n", "NOOP after idle", b"250")
                await _command(reader, writer, b"QUIT\r\n", "QUIT", b"221")
            except (OSError, ssl.SSLError, ReplyError) as e:
                self._error(e)
            writer.transport.abort()
            reader.watchdog.cancel()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", help="CA file to verify the server (TLS sessions)")
    p.add_argument("--plain", action="store_true", help="no STARTTLS/AUTH (sink baseline)")
    p.add_argument("--count", type=int, default=100, help="messages (or idle sessions)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--size", type=int, default=2000, help="bytes per message")
    p.add_argument("--recipients", type=int, default=1)
    p.add_argument("--per-connection", type=int, default=1, help="messages per session")
    p.add_argument("--deadline", type=float, default=120.0,
                   help="seconds after which no new session starts")
    p.add_argument("--idle", action="store_true", help="hold sessions open (S5)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds without progress after which a session is an error")
    return p.parse_args(argv)


def main(argv=None):
    """
    Print one JSON object: ok (messages accepted, or sessions held for
    --idle), errors ({description: count}), latencies_ms (one per message),
    start/end (CLOCK_MONOTONIC, shared by all processes of the machine),
    cpu_ms (this client's CPU time during the run), tls (version and cipher), capped.
    """
    args = parse(argv)
    client = Client(args)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    asyncio.run(client.idle() if args.idle else client.run())
    end = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "ok": client.ok,
        "errors": client.errors,
        "latencies_ms": [round(x, 3) for x in client.latencies],
        "start": start,
        "end": end,
        "cpu_ms": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000,
        "tls": client.tls,
        "capped": getattr(client, "capped", False),
    }), flush=True)


if __name__ == "__main__":
    main()
