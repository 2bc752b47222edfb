# -*- test-case-name: tests.test_logs -*-
"""
Where log events go: the main log and the SMTP transcript (C{--smtplog}).

Sessions log every command and reply to the C{smtpproxy.smtp} namespace,
and only when the transcript is on.  Those events go to the smtplog file
and never to the main log, which gets everything else at or above
C{--loglevel}.  Passwords are never in any event: the transcript masks AUTH
data unless C{--credentials}, and nothing else logs the login's password.

The main log is C{--logpath}; without it, where twistd's own C{--logfile}
or C{--syslog} says (a daemon's stderr is /dev/null, so ignoring them lost
everything), else stderr under C{-n} and C{twistd.log} for a daemon, as
twistd does.  Log files are private (C{0640}, the smtplog C{0600} with
C{--credentials}, which puts passwords in it) whatever the umask.
"""

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    Logger,
    textFileLogObserver,
)

log = Logger()

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

    @param main: a text file for the main log, or an C{ILogObserver}.
    @param level: the lowest C{LogLevel} in the main log.
    @param transcript: a text file for the SMTP transcript, or C{None}.
    """

    def __init__(self, main, level, transcript=None):
        self._observers = [
            FilteringLogObserver(
                main if ILogObserver.providedBy(main) else textFileLogObserver(main),
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


def main_log(logpath, twistd, open_file):
    """
    Where the main log goes (see the module docstring).

    @param logpath: C{--logpath}, or C{None}.
    @param twistd: twistd's own options (a mapping; empty when the plugin
        runs without twistd).
    @param open_file: opens a log file at a path (the plugin's, which
        turns a failure into a start-up error).
    @return: a text file or an C{ILogObserver}.
    """
    if logpath is not None:
        return open_file(logpath)
    if twistd.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        return LegacyLogObserverWrapper(SyslogObserver(twistd.get("prefix", "smtpproxy")).emit)
    logfile = twistd.get("logfile")
    if logfile == "-":
        return sys.stdout
    if logfile:
        return open_file(logfile)
    return sys.stderr if twistd.get("nodaemon", True) else open_file("twistd.log")


def reopen(log_files, user):
    """
    Reopen every log file; one that cannot be reopened stays as it was,
    and its error line says what to fix (after C{--user}, the process can
    only create files where that user may write).  "Reopened" is said only
    when every file was.

    @param user: the name of the user the process runs as.
    """
    failed = False
    for log_file in log_files:
        try:
            log_file.reopen()
        except OSError as e:
            failed = True
            log.error(
                "cannot reopen log file {path}: {error}; still writing to the file it was "
                "(renamed?). Put the logs in a directory that user {user} can write",
                path=log_file.path, error=e.strerror, user=user)
    if not failed:
        log.info("log files reopened")


class LogFile:
    """
    A log file that can be reopened at its path (C{SIGUSR1}): logrotate
    renames it, the proxy reopens, and the next line starts the new file
    with none lost (C{copytruncate} loses what comes between its copy and
    its truncation).

    @param mode: the permissions of a file this creates, whatever the
        umask; an existing file keeps its own.
    """

    def __init__(self, path, mode=0o640):
        self.path = path
        self.mode = mode
        self._file = self._open()

    def _open(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, self.mode)
            os.fchmod(fd, self.mode)
        except FileExistsError:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return open(fd, "a", encoding="utf-8", buffering=1)

    def write(self, text):
        self._file.write(text)

    def flush(self):
        self._file.flush()

    def reopen(self):
        """
        Continue in a file at C{path}; on OSError the current one stays.

        A file still at its path is kept, not opened again: logrotate
        leaves an empty log in place (C{notifempty}), and with C{--user}
        the process could not open again a file root created at start.
        """
        if self._in_place():
            return
        new = self._open()
        old, self._file = self._file, new
        old.close()

    def _in_place(self):
        """Whether C{path} still names the file being written."""
        try:
            here = os.stat(self.path)
        except OSError:
            return False
        current = os.fstat(self._file.fileno())
        return (here.st_dev, here.st_ino) == (current.st_dev, current.st_ino)
