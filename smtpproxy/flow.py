# -*- test-case-name: tests.test_session -*-
"""
A session's input and output flow.

Input goes through a pull-based L{smtpproxy.framing.Framer}: while a reply
is pending (a message's outcome, a recipient's verdict from the upstream
with C{--verify_recipients}, or the login API's verdict on AUTH with
C{--auth_api}) the session stops pulling (and pauses the socket), so a
command pipelined after the final dot or after such a RCPT or AUTH is
answered only after that reply, and every command gets exactly one reply,
in order.

The session is also the transport's push producer of replies: a client
that pipelines commands but never reads the replies fills the transport's
write buffer, the transport pauses the session, and the session stops
reading until the client reads, so such a client cannot make the proxy
buffer without bound.
"""

from smtpproxy import replies
from smtpproxy.framing import BARE_LF, TOO_LONG


class InputFlow:
    """
    Input pulling and flow control for L{smtpproxy.session.ProxySession}
    (a mixin).  Its state: C{_framer}; C{_held}, a reply is pending;
    C{_blocked}, the client does not read its replies; C{_pulling}, a pull
    loop runs; C{_handshaking}, a TLS handshake runs.  It hands lines to the
    session's C{_command} (or C{_auth_response} during AUTH) and message
    pieces to C{_data_piece}.
    """

    def dataReceived(self, data):
        if not self._closing:
            self._framer.feed(data)
            self._drain()

    def _drain(self):
        """
        Take input while it can be used.  Only one loop pulls at a time: a
        reply that was ready at once (a cached verdict) releases the input
        from inside the loop, which then just goes on.
        """
        if self._pulling:
            return
        self._pulling = True
        try:
            self._pull()
        finally:
            self._pulling = False

    def _pull(self):
        while not (self._held or self._blocked or self._closing):
            if self._framer.in_data:
                piece = self._framer.next_data()
                if piece is None:
                    return
                self._data_piece(piece)
                continue
            line = self._framer.next_command()
            if line is None:
                return
            if self.startedTLS:
                self.setTimeout(self.limits.idle_timeout)
            if line is TOO_LONG:
                self._bad_line("[overlong line]", replies.LINE_TOO_LONG)
            elif line is BARE_LF:
                self._bad_line("[line ended by a bare LF]", replies.BARE_LF_LINE)
            elif self._auth is not None:
                self._log_input(line if self.factory.config.log_credentials else "[REDACTED]")
                self._auth_response(line)
            else:
                self._command(line)

    def _bad_line(self, description, reply):
        """Refuse a line that was no command; it also ends an AUTH exchange."""
        self._log_input(description)
        self._auth = None
        self.reply(reply)

    def _reading(self):
        """
        Read the socket only while input can be used, and always during a
        TLS handshake: replies written before it completes wait in the TLS
        layer, which pauses us, and not reading would stall the handshake.
        """
        if (self._held or self._blocked) and not self._handshaking:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # Output flow control (IPushProducer): the transport calls these.

    def pauseProducing(self):
        """The client is not reading its replies: take no more commands."""
        self._blocked = True
        self._reading()

    def resumeProducing(self):
        self._blocked = False
        self._reading()
        self._drain()

    def stopProducing(self):
        """The connection is gone; L{smtpproxy.session.ProxySession.connectionLost} cleans up."""
        self._producing = False

    def _hold(self):
        """Take no input and run no timer until L{_resume}."""
        self._held = True
        self._reading()
        self.setTimeout(None)

    def _await(self, deferred):
        """
        Answer the current command with the L{replies.Reply} that
        C{deferred} fires with (it never fails), holding the commands
        after it until then.  If the client goes first, C{deferred} is
        cancelled and nothing is sent.
        """
        self._hold()
        self._awaiting = deferred
        deferred.addCallback(self._awaited)

    def _awaited(self, reply):
        self._awaiting = None
        self._resume(reply)

    def _resume(self, reply):
        """
        Send the reply that held the input, then take input again; after a
        C{421} (a lock-out) the connection is closed instead.
        """
        self.reply(reply)
        self._held = False
        if reply.code == 421:
            self._close()
            return
        if self._closing or self.factory.draining:
            self.shut_down()  # nothing more for a client that hung up after its dot
            return
        self.setTimeout(self.limits.idle_timeout)
        self._reading()
        self._drain()
