"""
The client side: one L{ProxySession} per connection.

It is Twisted's L{smtp.ESMTP} with the command loop replaced, because the
stock one executes plaintext pipelined behind STARTTLS, offers AUTH without
TLS, falls out of DATA on a long line and forces the final reply to 250 or
550 (TWISTED-NOTES fights A, C, E, F).  What is kept from Twisted: the
greeting, the TLS context and STARTTLS capability check, the EHLO extension
listing, reply formatting and the idle timer.

Input goes through a pull-based L{Framer}: while a message's outcome is
pending the session stops pulling (and pauses the socket), so a command
pipelined after the final dot is answered only after the DATA reply, and
every command gets exactly one reply, in order.
"""

from twisted.logger import Logger
from twisted.mail import smtp

from smtpproxy import auth, replies
from smtpproxy.commands import CommandError, parse_command, parse_mail, parse_rcpt
from smtpproxy.framing import TOO_LONG, Framer

log = Logger(namespace="smtpproxy.smtp")

NEEDS_TLS = frozenset({"AUTH", "MAIL", "RCPT", "DATA"})


class ProxySession(smtp.ESMTP):
    """
    One client connection.

    @ivar factory: the L{smtpproxy.server.ProxyFactory} with the config and
        the shared services.
    @ivar number: this connection's id in the logs.
    """

    noisy = False

    def __init__(self, factory, number):
        super().__init__(contextFactory=factory.config.tls)
        self.factory = factory
        self.number = number
        self.limits = factory.config.limits
        self.host = factory.config.hostname
        self.timeout = self.limits.pretls_timeout
        self._transcript = factory.config.transcript
        self._framer = Framer(self.limits.max_line_length)
        self._held = False
        self._login = None
        self._auth = None
        self._transaction = None
        self._message = None

    # Output.

    def connectionMade(self):
        self._log_input(f"[connection from {self.transport.getPeer().host}]")
        super().connectionMade()

    def greeting(self):
        return self.host + b" ESMTP smtpproxy"

    def reply(self, reply):
        self.sendCode(reply.code, reply.encode())

    def sendLine(self, line):
        if self._transcript:
            log.info("{id} > {line}", id=self.number, line=_text(line))
        super().sendLine(line)

    def extensions(self):
        """Offer AUTH only inside TLS and STARTTLS only outside it."""
        ext = {}
        if not self.startedTLS and self.canStartTLS:
            ext[b"STARTTLS"] = None
        ext[b"PIPELINING"] = None
        ext[b"8BITMIME"] = None
        ext[b"SIZE"] = [b"%d" % self.limits.max_message_size]
        ext[b"ENHANCEDSTATUSCODES"] = None
        if self.startedTLS:
            ext[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        return ext

    # Input.

    def dataReceived(self, data):
        self.resetTimeout()
        self._framer.feed(data)
        self._drain()

    def _drain(self):
        while not self._held and not self.transport.disconnecting:
            if self._framer.in_data:
                piece = self._framer.next_data()
                if piece is None:
                    return
                self._data_piece(piece)
                continue
            line = self._framer.next_command()
            if line is None:
                return
            if line is TOO_LONG:
                self._log_input("[overlong line]")
                self._auth = None
                self.reply(replies.LINE_TOO_LONG)
            elif self._auth is not None:
                self._log_input(line if self.factory.config.log_credentials else "[REDACTED]")
                self._auth_response(line)
            else:
                self._command(line)

    def _log_input(self, line):
        if self._transcript:
            log.info("{id} < {line}", id=self.number, line=_text(line))

    def _command(self, line):
        command = parse_command(line)
        handler = getattr(self, "smtp_" + command.verb, None) if command.verb else None
        self._log_command(line, command, handler)
        if handler is None:
            self.reply(replies.UNKNOWN_COMMAND)
        elif command.verb in NEEDS_TLS and not self.startedTLS:
            self.reply(replies.MUST_STARTTLS)
        else:
            handler(command.argument)

    def _log_command(self, line, command, handler):
        """
        Log a command line, masking what may hold a password: AUTH data,
        and lines that are no command (a confused client's credentials).
        """
        if self.factory.config.log_credentials:
            self._log_input(line)
        elif handler is None:
            self._log_input(f"[unrecognized command, {len(line)} bytes]")
        elif command.verb == "AUTH":
            self._log_input(b"AUTH " + command.argument.split(b" ", 1)[0] + b" [REDACTED]")
        else:
            self._log_input(line)

    def _hold(self):
        """Stop reading input until L{_release}: a reply is pending."""
        self._held = True
        self.transport.pauseProducing()

    def _release(self):
        self._held = False
        self.transport.resumeProducing()
        self._drain()

    # Commands (SPEC section 1).

    def smtp_EHLO(self, argument):
        if self._greet(argument):
            self.sendCode(250, self.host + b" Hello\n" + self.listExtensions())

    def smtp_HELO(self, argument):
        if self._greet(argument):
            self.sendCode(250, self.host + b" Hello")

    def _greet(self, argument):
        """Record the client's name and drop any transaction; refuse a missing name."""
        if not argument:
            self.reply(replies.DOMAIN_REQUIRED)
            return False
        self._helo = (argument, self._helo[1])
        self._transaction = None
        return True

    def smtp_STARTTLS(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        elif self.startedTLS:
            self.reply(replies.ALREADY_TLS)
        elif not self.canStartTLS:
            self.reply(replies.TLS_UNAVAILABLE)
        else:
            self.reply(replies.SERVICE_READY_TLS)
            self._framer.discard()
            self._helo = (None, self._helo[1])
            self._login = self._transaction = None
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            self.setTimeout(self.limits.idle_timeout)

    def smtp_AUTH(self, argument):
        if self._login is not None:
            self.reply(replies.ALREADY_AUTHENTICATED)
        elif self._transaction is not None:
            self.reply(replies.BAD_SEQUENCE)
        else:
            try:
                self._auth, step = auth.start(argument)
            except auth.AuthError as e:
                self.reply(e.reply)
            else:
                self._auth_step(step)

    def _auth_response(self, line):
        try:
            step = self._auth.respond(line)
        except auth.AuthError as e:
            self._auth = None
            self.reply(e.reply)
        else:
            self._auth_step(step)

    def _auth_step(self, step):
        """Ask for more, or record the login: the API judges it later."""
        if isinstance(step, auth.Challenge):
            self.sendCode(334, step.prompt)
        else:
            self._auth = None
            self._login = step.login
            self.reply(replies.AUTH_OK)

    def smtp_MAIL(self, argument):
        if self._login is None:
            self.reply(replies.AUTH_REQUIRED)
        elif self._transaction is not None:
            self.reply(replies.NESTED_MAIL)
        else:
            try:
                mail = parse_mail(argument)
            except CommandError as e:
                self.reply(e.reply)
                return
            if mail.size is not None and mail.size > self.limits.max_message_size:
                self.reply(replies.MESSAGE_TOO_BIG)
                return
            helo = _text(self._helo[0] or b"")
            client = self.transport.getPeer()
            self._transaction = self.factory.transaction(self._login, client, helo)
            self._transaction.validateFrom(self._helo, mail.address)
            self.reply(replies.SENDER_OK)

    def smtp_RCPT(self, argument):
        if self._transaction is None:
            self.reply(replies.NEED_SENDER)
            return
        try:
            recipient = parse_rcpt(argument)
        except CommandError as e:
            self.reply(e.reply)
            return
        if len(self._transaction.recipients) >= self.limits.max_recipients:
            self.reply(replies.TOO_MANY_RECIPIENTS)
        else:
            self._transaction.validateTo(recipient)
            self.reply(replies.RECIPIENT_OK)

    def smtp_DATA(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        elif self._transaction is None or not self._transaction.recipients:
            self.reply(replies.NEED_RECIPIENT)
        else:
            self._message = self._transaction.begin()
            self._transaction = None
            self.reply(replies.START_DATA)
            self._framer.start_data()

    def _data_piece(self, piece):
        if self._framer.bare_line_end:
            self._message.refuse(replies.BARE_LINE_END)
        else:
            self._message.dataReceived(piece.data)
        if piece.end:
            message, self._message = self._message, None
            self._log_input(f"[message data, {message.size} bytes]")
            self._hold()
            self.setTimeout(None)
            message.eomReceived().addCallback(self._message_done)

    def _message_done(self, reply):
        self.reply(reply)
        self.setTimeout(self.limits.idle_timeout)
        self._release()

    def smtp_RSET(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        else:
            self._transaction = None
            self.reply(replies.RESET_OK)

    def smtp_NOOP(self, argument):
        self.reply(replies.NOOP_OK)

    def smtp_VRFY(self, argument):
        self.reply(replies.VRFY)

    def smtp_HELP(self, argument):
        self.reply(replies.HELP)

    def smtp_QUIT(self, argument):
        self.reply(replies.BYE)
        self.transport.loseConnection()

    # Connection events.

    def timeoutConnection(self):
        self.reply(replies.TIMEOUT)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._message is not None:
            self._message.connectionLost()
            self._message = None
        super().connectionLost(reason)


def _text(data):
    """Bytes from the wire as text for logs and the API (SPEC section 3)."""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
