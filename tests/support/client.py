"""
A scripted SMTP client: what mail clients do, and what attackers do.

Twisted's own ESMTPSender can only speak correctly.  Tests of the proxy also have to send
raw, pipelined or malformed bytes (smuggling, STARTTLS injection, overlong lines) and see each
reply exactly, so this client writes whatever it is given and parses whatever comes back into
L{Reply} objects, in order, one per reply however many lines it has.

It also notes replies that nothing asked for: after connecting only the greeting may arrive
before the client speaks, and after STARTTLS nothing may (RFC 3207 section 4.2; a server that
executes plaintext pipelined after STARTTLS answers inside TLS unprompted).
"""

import base64
from collections import deque

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from zope.interface import implementer


@attrs.frozen
class Reply:
    """One SMTP reply: its code and the text of each line, without the "250-" prefixes."""

    code: int
    lines: list

    @property
    def text(self):
        """The text of the last line."""
        return self.lines[-1]

    def __str__(self):
        last = len(self.lines) - 1
        return "\r\n".join(
            f"{self.code:03d}{' ' if i == last else '-'}{line}" for i, line in enumerate(self.lines)
        )


class UnexpectedReply(Exception):
    """A step of a script got a reply other than the one it needs to go on."""

    def __init__(self, step, reply):
        super().__init__(f"{step!r} was answered {reply}")
        self.step = step
        self.reply = reply


def connect(reactor, port, *, tls=None, wait_for_greeting=True):
    """
    Connect to 127.0.0.1:C{port}; a Deferred firing with the L{ScriptedClient}.

    With C{tls} (client options) the connection is TLS from the start, as on port 465.
    By default it fires once the greeting is in (C{client.greeting}); with
    C{wait_for_greeting=False} at once, and the greeting is then the first of C{replies(1)}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    connecting = connectProtocol(endpoint, ScriptedClient())
    if wait_for_greeting:
        connecting.addCallback(lambda client: client._next_reply().addCallback(lambda _: client))
    return connecting


@implementer(IHandshakeListener)
class ScriptedClient(Protocol):
    """
    @ivar greeting: the first L{Reply} of the connection (None until it arrives).
    @ivar received: every byte received, decrypted once TLS is on.
    @ivar unsolicited: replies that arrived while the client had sent nothing since it
        connected (apart from the greeting) or since TLS started.
    """

    def __init__(self):
        self.greeting = None
        self.received = b""
        self.unsolicited = []
        self._buffer = b""
        self._lines = []
        self._ready = deque()
        self._waiting = deque()
        self._spoken = False
        self._expected_unprompted = 1
        self._handshake = None
        self._lost = None
        self._closed = []

    def send(self, data):
        """Write raw bytes, exactly as given."""
        self._spoken = True
        self.transport.write(data)

    def command(self, line, expect=None):
        """
        Send C{line} plus CRLF; a Deferred firing with the next reply (replies are taken in
        arrival order).  With C{expect}, a reply with another code fails it with
        L{UnexpectedReply}.
        """
        self.send(line + b"\r\n")
        reply = self._next_reply()
        if expect is not None:
            reply.addCallback(_require, line.decode("utf-8", "replace"), expect)
        return reply

    @defer.inlineCallbacks
    def replies(self, n):
        """The next C{n} replies, as a list (for pipelined commands sent with L{send})."""
        collected = []
        for _ in range(n):
            collected.append((yield self._next_reply()))
        return collected

    @defer.inlineCallbacks
    def starttls(self, context, pipelined=b""):
        """
        Send STARTTLS, plus C{pipelined} bytes in the same write (an injection attempt); on 220,
        start TLS with the client C{context}.  Fires when the handshake has completed.
        """
        self.send(b"STARTTLS\r\n" + pipelined)
        reply = yield self._next_reply()
        _require(reply, "STARTTLS", 220)
        self._handshake = defer.Deferred()
        self._spoken = False
        self._expected_unprompted = 0
        self.transport.startTLS(context)
        yield self._handshake

    def wait_closed(self):
        """A Deferred that fires once the connection is closed, by either side."""
        if self._lost is not None:
            return defer.succeed(None)
        self._closed.append(defer.Deferred())
        return self._closed[-1]

    def close(self):
        """Close the connection; a Deferred that fires once it is closed."""
        if self._lost is None:
            self.transport.loseConnection()
        return self.wait_closed()

    def _next_reply(self):
        if self._ready:
            return defer.succeed(self._ready.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        waiter = defer.Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def dataReceived(self, data):
        self.received += data
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            self._lineReceived(line.decode("utf-8", "replace"))

    def _lineReceived(self, line):
        code = int(line[:3]) if line[:3].isdigit() else 0
        self._lines.append(line[4:] if code else line)
        if code and line[3:4] == "-":
            return
        reply = Reply(code, self._lines)
        self._lines = []
        if self.greeting is None:
            self.greeting = reply
        if not self._spoken:
            if self._expected_unprompted:
                self._expected_unprompted -= 1
            else:
                self.unsolicited.append(reply)
        if self._waiting:
            self._waiting.popleft().callback(reply)
        else:
            self._ready.append(reply)

    def handshakeCompleted(self):
        handshake, self._handshake = self._handshake, None
        if handshake is not None:  # None with implicit TLS: nobody waits for it
            handshake.callback(None)

    def connectionLost(self, reason):
        self._lost = reason
        handshake, self._handshake = self._handshake, None
        waiting, self._waiting = self._waiting, deque()
        closed, self._closed = self._closed, []
        for d in ([handshake] if handshake else []) + list(waiting):
            d.errback(reason)
        for d in closed:
            d.callback(None)


def data_block(message):
    """
    C{message} (CRLF lines) as sent after 354: dot-stuffed, CRLF-terminated, then ".CRLF".
    Stuffing follows CRLF line starts only; bare-LF tricks are for raw L{ScriptedClient.send}.
    """
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


@defer.inlineCallbacks
def start_data(client, sender, recipient):
    """
    MAIL, RCPT and DATA pipelined on a logged-in L{ScriptedClient}, as clients do; fires
    once the 354 is in, or fails with L{UnexpectedReply} naming the step answered otherwise.
    """
    client.send(b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<" + recipient + b">\r\nDATA\r\n")
    for step, code, reply in zip(("MAIL", "RCPT", "DATA"), (250, 250, 354), (yield client.replies(3))):
        _require(reply, step, code)


@defer.inlineCallbacks
def submit(client, sender, recipient, message):
    """Send one message on a logged-in L{ScriptedClient}; fires with the reply to its final dot."""
    yield start_data(client, sender, recipient)
    client.send(data_block(message))
    (final,) = yield client.replies(1)
    return final


@defer.inlineCallbacks
def send_mail(
    reactor, port, client_context, username, password, sender, recipients, message,
    *, helo="client.example",
):
    """
    Submit C{message} the way a mail client does: EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL,
    RCPT..., DATA, the message, QUIT.  Fires with the L{Reply} to the final dot, or fails with
    L{UnexpectedReply} naming the first step not answered as a submission needs.
    """
    client = yield connect(reactor, port)
    try:
        _require(client.greeting, "greeting", 220)
        yield client.command(b"EHLO " + helo.encode(), expect=250)
        yield client.starttls(client_context)
        yield client.command(b"EHLO " + helo.encode(), expect=250)
        plain = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())
        yield client.command(b"AUTH PLAIN " + plain, expect=235)
        yield client.command(b"MAIL FROM:<" + sender.encode() + b">", expect=250)
        for recipient in recipients:
            yield client.command(b"RCPT TO:<" + recipient.encode() + b">", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(data_block(message))
        (final,) = yield client.replies(1)
        yield client.command(b"QUIT").addErrback(lambda _: None)  # the outcome is already known
        return final
    finally:
        yield client.close()


def _require(reply, step, code):
    if reply.code != code:
        raise UnexpectedReply(step, reply)
    return reply
