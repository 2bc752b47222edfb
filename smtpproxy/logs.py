"""
Where log events go: the main log and the SMTP transcript (C{--smtplog}).

Sessions log every command and reply to the C{smtpproxy.smtp} namespace,
and only when the transcript is on.  Those events go to the smtplog file
and never to the main log, which gets everything else at or above
C{--loglevel}.  Passwords are never in any event: the transcript masks AUTH
data unless C{--credentials}, and nothing else logs the login's password.
"""

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    textFileLogObserver,
)

TRANSCRIPT = "smtpproxy.smtp"

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
}


def _is_transcript(event):
    return event.get("log_namespace") == TRANSCRIPT


class LogRouter:
    """
    A log observer sending each event to the main log or the transcript.

    @param main: a text file for the main log.
    @param level: the lowest L{LogLevel} in the main log.
    @param transcript: a text file for the SMTP transcript, or L{None}.
    """

    def __init__(self, main, level, transcript=None):
        self._observers = [
            FilteringLogObserver(
                textFileLogObserver(main),
                [
                    lambda e: PredicateResult.no if _is_transcript(e) else PredicateResult.maybe,
                    LogLevelFilterPredicate(defaultLogLevel=level),
                ],
            )
        ]
        if transcript is not None:
            self._observers.append(
                FilteringLogObserver(
                    textFileLogObserver(transcript),
                    [lambda e: PredicateResult.yes if _is_transcript(e) else PredicateResult.no],
                )
            )

    def __call__(self, event):
        for observer in self._observers:
            observer(event)


class LogFile:
    """
    A log file that can be reopened at its path (C{SIGUSR1}): logrotate
    renames it, the proxy reopens, and the next line starts the new file
    with none lost (C{copytruncate} loses what comes between its copy and
    its truncation).
    """

    def __init__(self, path):
        self.path = path
        self._file = self._open()

    def _open(self):
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, text):
        self._file.write(text)

    def flush(self):
        self._file.flush()

    def reopen(self):
        """Continue in a file at C{path}; on OSError the current one stays."""
        new = self._open()
        old, self._file = self._file, new
        old.close()
