# -*- test-case-name: tests.test_manual -*-
"""
The text C{--man} prints: what the proxy does, then every option.

The option reference is generated from L{smtpproxy.options.Options}, so the
manual and C{--help} cannot disagree, and a new option cannot be missing.
"""

import inspect

from smtpproxy._version import __version__

DESCRIPTION = """\
NAME
    smtpproxy - SMTP submission proxy that asks a policy API before relaying

SYNOPSIS
    twistd -n smtpproxy --listen=127.0.0.1:587 --tohost=mx.example --toport=25 \\
        --tls_cert=cert.pem --tls_key=key.pem --api=https://policy.example/check

DESCRIPTION
    Mail clients connect, must use STARTTLS, and log in with AUTH PLAIN or
    LOGIN.  The proxy collects the login, the envelope (MAIL FROM and every
    RCPT TO) and the message's header block, then POSTs one JSON request to
    the policy API:

        {"username": "...", "password": "...", "from": "a@b.example",
         "to": ["x@y.example"], "headers": [{"name": "Subject", "value": "hi"}],
         "client_address": "192.0.2.1", "helo": "client.example"}

    The API answers {"allow": true, "headers": [{"name": ..., "value": ...}]}
    (headers to add; a null value removes; a name replaces every header of
    that name; an optional "from" replaces the envelope sender) or
    {"allow": false, "reason": "...", "temporary": false}.

    Once the whole message has arrived and is allowed, the proxy relays it
    to --tohost:--toport and gives the client the upstream's answer.  The
    client hears 250 only after the upstream accepted the message.

LOGIN CHECK (--auth_api, recommended)
    With --auth_api=URL each completed AUTH is POSTed there first (same
    timeout, CA and connection pool as --api):

        {"username": "...", "password": "...", "mechanism": "PLAIN",
         "client_address": "192.0.2.1", "helo": "client.example"}

    235 2.7.0                     {"allow": true}
    535 5.7.8                     {"allow": false}: the client may try again
    454 4.7.0                     {"allow": false, "temporary": true}, or the
                                  API was down, slow or answered nonsense
    421 4.7.0                     --max_auth_failures 535s from one address
                                  within --auth_failure_window: that
                                  connection is closed, and the address gets
                                  421 before the greeting until one window
                                  has passed (not for --limit_exempt)

    Without it, AUTH takes any well-formed login and the API judges the
    password with each message (550 after DATA).

ESMTP EXTENSIONS
    Inside TLS the proxy offers DSN and SMTPUTF8 while the upstream does, and
    SIZE no larger than the upstream's; it learns the upstream's EHLO at start
    and from every conversation with it.  MAIL takes SIZE, BODY, AUTH=<> or
    AUTH=<xtext address>, and where offered RET, ENVID and SMTPUTF8; RCPT
    takes NOTIFY and ORCPT where DSN is offered.  Each goes upstream as the
    client wrote it where the upstream offers it (AUTH= only to an upstream
    the proxy logged in to); the API sees them as "mailParameters" and
    "rcptParameters", and may answer an "authId" for the log line.
    451 4.6.7                     SMTPUTF8 mail while the upstream no longer
                                  offers SMTPUTF8
    553 5.6.7                     a non-ASCII address without SMTPUTF8
    With --upstream_xclient, an upstream that offers XCLIENT is told the real
    client (address, port, HELO, login) before each message.

HEALTH
    With --metrics, GET /healthz is 200 while the process runs, and GET
    /readyz is 200, or 503 with the reasons while draining or while the
    upstream or a policy API failed the last check (every 5 s).

REPLIES AFTER THE FINAL DOT
    250 2.0.0 <upstream text>     the upstream accepted the message
    550 5.7.1 <reason>            the API refused the message
    450 4.7.1 <reason>            the API refused it for now ("temporary")
    451 4.3.0                     the API was down, slow or answered nonsense
    451 4.4.1                     the upstream was unreachable, slow or dropped
    4xx/5xx <upstream text>       the upstream refused (any refused recipient
                                  fails the whole message: nobody gets it)
    550 5.6.0                     the message contained a bare CR (or, with
                                  --bare_lf=reject, a bare LF)
    552 5.3.4                     the message or its header block was too big
    452 4.3.1                     header blocks in memory reached --header_memory
                                  (the first 8 KiB of each block are free)

RECIPIENT CHECKS (--verify_recipients)
    Each RCPT is put to the upstream at once (MAIL FROM with the client's
    sender, RCPT TO; never DATA on that connection); its refusal is the
    client's answer to that RCPT, so only that address fails.  One upstream
    connection serves a whole transaction.
    250 2.1.5                     the upstream accepted the recipient
    4xx/5xx <upstream text>       the upstream refused it (or the sender)
    451 4.4.1                     the upstream could not be asked
    Accepted and 5xx verdicts are reused for --verify_cache_time seconds.

LINE ENDS
    With --bare_lf=normalize (the default, as Postfix 3.9's
    smtpd_forbid_bare_newline=normalize) a bare LF ends a command or message
    line as CRLF does, and the message is relayed with CRLF line ends only.
    The data still ends only at CRLF.CRLF; a line holding one dot next to a
    bare LF is relayed as ".." so it cannot end the upstream's data.  A bare
    CR is never a line end: the message is refused.  With --bare_lf=reject a
    command line ended by a bare LF gets 500 5.5.2, a message with one 550
    5.6.0.

START-UP
    A missing or unusable option (an --api or --auth_api that is no http://
    or https:// URL, a certificate that does not load) or a listener
    (--listen, --listen_tls, --metrics) that cannot be opened (in use, no
    permission, no such port) stops the start with one line on stderr and
    exit status 2, before the pid file, daemonizing or --user:
        smtpproxy: --listen=0.0.0.0:587: cannot listen: Address already in use

SIGNALS
    SIGTERM  stop listening, answer idle clients 421 4.3.2, finish the
             messages in flight (a client in the middle of DATA may send the
             rest) for up to --drain_timeout, then exit 0.  A message whose
             final dot went upstream is waited for (--upstream_timeout at
             most), never cut off.  SIGHUP and SIGUSR1 keep working while
             draining; a second SIGTERM (or SIGINT) ends the drain at once.
    SIGHUP   re-read --tls_cert and --tls_key for new connections; an
             unusable pair is logged and the old one kept.
    SIGUSR1  reopen --logpath and --smtplog at their paths (log rotation);
             with --user, in a directory that user can write, else an
             error line says so and the old (renamed) file goes on.
    After its last reply (221, 421) a connection is closed within 2 s even
    if the client keeps its side (or its TLS) open, so SIGTERM with nothing
    in flight exits within a few seconds whatever idle clients do.

LOGS
    --logpath gets one info line per message, starting with its outcome
    (delivered, denied, temp_failed, refused_upstream, refused_limit,
    invalid, as the metric counts them) and the connection number the
    smtplog uses (conn=), then client, user, sender, recipient count, size,
    policy decision and latency, TLS, reply and time.  A message whose client
    went away (or was cut off) before the final dot has its line too:
        message aborted conn=18 client=192.0.2.7 user='alice' ...
            after=<bytes received> policy=<allow|deny|pending|-> ...
    There is one line per login checked with --auth_api, a warning per
    address locked out, one warning for a message that cannot be spooled (a
    full disk: 451), and rate-limited summaries of refused connections and
    failed TLS handshakes.  --smtplog gets every command and reply, the TLS
    version and cipher, and how each connection ended; AUTH data shows as
    [REDACTED] unless --credentials is given.  No password is logged
    anywhere else.  Without --logpath, twistd's own --logfile or --syslog is
    honoured.  Log files the proxy creates are 0640 whatever the umask, the
    smtplog 0600 with --credentials.  With --user, give twistd a --pidfile
    in a directory that user owns, or the pid file is left behind at exit.
"""


def text(options):
    """The manual, with the option reference taken from C{options}."""
    lines = [DESCRIPTION, "OPTIONS"]
    for label, doc in _options(options):
        lines.append(f"    --{label}")
        lines.append(f"        {doc}")
    lines.append("")
    lines.append(f"VERSION\n    smtpproxy {__version__}")
    return "\n".join(lines)


def _options(options):
    """
    A (label, help) pair for every option C{options} accepts, read from the
    tables C{twisted.python.usage.Options} itself parses with, so that no
    option can be left out: first those that take a value (with their
    defaults), then the switches, each with its one-letter synonym.  Names
    are spelled with underscores, as every option is given
    (L{smtpproxy.options.Options.parseOptions}).
    """
    short = {long: name for name, long in options.synonyms.items() if len(name) == 1 and name != long}
    for spelling in sorted(options.longOpt, key=lambda spelling: not spelling.endswith("=")):
        name = spelling.rstrip("=")
        label = name.replace("-", "_")
        if spelling.endswith("="):
            label += "=" + _metavar(options, name)
        if name in short:
            label += ", -" + short[name]
        yield label, _help(options, name)


def _metavar(options, name):
    """What an option takes: C{VALUE}, or the argument's name in its C{opt_} method."""
    if name in options.defaults:
        return "VALUE"
    handler = getattr(options, "opt_" + name.replace("-", "_"))
    return next(iter(inspect.signature(handler).parameters)).upper()


def _help(options, name):
    """The option's help (its first paragraph) on one line, with its default where it has one."""
    paragraph = options.docs[name].strip().split("\n\n")[0]
    doc = " ".join(line.strip() for line in paragraph.splitlines())
    default = options.defaults.get(name)
    if default is None or name + "=" not in options.longOpt:
        return doc
    return f"{doc} [default: {default}]"
