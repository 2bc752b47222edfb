# -*- test-case-name: tests.test_session -*-
"""
A session's mail transaction: MAIL, RCPT, DATA and RSET (docs/protocol.rst
section 1), up to the reply after the final dot.

The envelope goes into a L{smtpproxy.transaction.Transaction} the factory
builds; after C{354} the framer's data pieces go to its
L{smtpproxy.transaction.Message}, and at the final dot the session holds
its input until the message's outcome (L{smtpproxy.flow.InputFlow._hold}).
"""

from smtpproxy import replies
from smtpproxy.commands import CommandError, parse_mail, parse_rcpt
from smtpproxy.transcript import text


class MailCommands:
    """
    The mail transaction side of L{smtpproxy.session.ProxySession} (a
    mixin).  Its state: C{_transaction}, the envelope under way (or
    C{None}); C{_message}, the message whose data is arriving; C{_pending},
    the message whose outcome the client waits for.
    """

    def smtp_MAIL(self, argument):
        if self._login is None:
            self.reply(replies.AUTH_REQUIRED)
        elif self._transaction is not None:
            self.reply(replies.NESTED_MAIL)
        else:
            try:
                mail = parse_mail(argument, self._offer)
            except CommandError as e:
                self.reply(e.reply)
                return
            if mail.size is not None and mail.size > self._size_limit():
                self.reply(replies.MESSAGE_TOO_BIG)
                return
            helo = text(self.helo_name or b"")
            self._transaction = self.factory.transaction(
                self._login, self.client, helo, connection=self.number, tls=self._tls)
            self._transaction.validateFrom(self.helo_name, mail.address)
            self._transaction.mail_parameters = mail.parameters
            self._transaction.origin = self._origin()
            self.reply(replies.SENDER_OK)

    def smtp_RCPT(self, argument):
        if self._transaction is None:
            self.reply(replies.NEED_SENDER)
            return
        try:
            rcpt = parse_rcpt(argument, self._offer, self._transaction.smtputf8)
        except CommandError as e:
            self.reply(e.reply)
            return
        if len(self._transaction.recipients) >= self.limits.max_recipients:
            self.reply(replies.TOO_MANY_RECIPIENTS)
        elif self.factory.config.verify_recipients:
            self._await(self._transaction.verify(rcpt.address, rcpt.parameters))
        else:
            self._transaction.validateTo(rcpt.address, rcpt.parameters)
            self.reply(replies.RECIPIENT_OK)

    def smtp_DATA(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        elif self._transaction is None or not self._transaction.recipients:
            self.reply(replies.NEED_RECIPIENT)
        else:
            self._message = self._transaction.begin()
            self._end_transaction()
            self.reply(replies.START_DATA)
            self._framer.start_data()
            self.setTimeout(self.limits.data_timeout)

    def _data_piece(self, piece):
        self.resetTimeout()
        if self._framer.bare_line_end:
            self._message.refuse(replies.BARE_LINE_END)
        else:
            self._message.dataReceived(piece.data)
        if piece.end:
            message = self._pending = self._message
            self._message = None
            self._log_input(f"[message data, {message.size} bytes]")
            self._hold()
            message.eomReceived().addCallback(self._message_done)

    @property
    def delivering(self):
        """
        Whether the client is sending a message or waits for a reply (a
        message's outcome, a recipient's verdict).
        """
        return self._held or self._message is not None

    @property
    def committed(self):
        """Whether the upstream may have the message whose outcome the client waits for."""
        return self._pending is not None and self._pending.committed

    def _message_done(self, reply):
        """The message's outcome; the API's C{authId} for it goes into the transcript too."""
        if self._pending.auth_id is not None:
            self._log_input(f"[policy authId {self._pending.auth_id}]")
        self._pending = None
        self._resume(reply)

    def _end_transaction(self):
        """
        Drop the transaction, if any, and with it the upstream connection
        its recipient checks used.
        """
        if self._transaction is not None:
            self._transaction.end()
            self._transaction = None

    def smtp_RSET(self, argument):
        if argument:
            self.reply(replies.NO_ARGUMENT_ALLOWED)
        else:
            self._end_transaction()
            self.reply(replies.RESET_OK)

    def _origin(self):
        """The real client, as XCLIENT names it to the upstream (C{--upstream_xclient})."""
        peer = self.transport.getPeer()
        address = self.client if ":" not in self.client else "IPV6:" + self.client
        return {
            "NAME": "[UNAVAILABLE]",
            "ADDR": address,
            "PORT": str(getattr(peer, "port", "")) or None,
            "PROTO": "ESMTP" if self._offer_extended else "SMTP",
            "HELO": text(self.helo_name or b"") or None,
            "LOGIN": self._login.username,
        }
