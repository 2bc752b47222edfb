# -*- test-case-name: tests.test_logs -*-
"""
The SMTP transcript (C{--smtplog}): each line a session sends and takes,
as an operator reads it.

AUTH data, and lines that are no command (a confused client's password),
are masked unless C{--credentials}; control characters from the client
are shown as escapes (L{loggable}).  The lines go to the C{smtpproxy.smtp}
log namespace, which L{smtpproxy.logs} routes to the smtplog only.
"""

import re

from twisted.logger import Logger

log = Logger(namespace="smtpproxy.smtp")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Transcript:
    """
    The transcript side of L{smtpproxy.session.ProxySession} (a mixin): it
    uses the session's C{number}, C{factory.config} and C{_message}, and
    C{_transcript}, whether the transcript is on at all (when it is off,
    nothing is formatted).
    """

    def sendLine(self, line):
        if self._transcript:
            log.info("{id} > {line}", id=self.number, line=loggable(line))
        super().sendLine(line)

    def _log_input(self, line):
        if self._transcript:
            log.info("{id} < {line}", id=self.number, line=loggable(line))

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
            mechanism = command.argument.split(None, 1)[:1] or [b""]
            self._log_input(b"AUTH " + mechanism[0] + b" [REDACTED]")
        else:
            self._log_input(line)

    def _log_disconnect(self, handshake_failure):
        if handshake_failure is not None:
            self._log_input(f"[TLS handshake failed: {handshake_failure}]")
        elif self._message is not None:
            self._log_input(f"[connection lost in DATA after {self._message.size} bytes]")
        else:
            self._log_input("[disconnected]")


def loggable(data):
    """
    A line for the transcript: control characters from the client (a bare
    CR that makes a terminal overwrite the line, an escape sequence) are
    shown as escapes, so no client can forge or hide transcript lines.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text(data))



def text(data):
    """Bytes from the wire as text for logs and the API (docs/protocol.rst section 3)."""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
