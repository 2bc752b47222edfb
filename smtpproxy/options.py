# -*- test-case-name: tests.test_options -*-
"""
The command line, turned into a L{ProxyConfig}: what twistd parses before
anything runs.

L{Options} keeps the original Perl proxy's option names (docs/protocol.rst
section 7) and checks every value at once, reading the files they name (TLS
certificate and key, upstream CA and password) while the process may still
read them, before twistd drops privileges; anything unusable stops the start
with one line (L{smtpproxy.startup.fail}).  L{config_from} is the
translation into the value objects an embedding application builds
directly.  Nothing here needs a reactor: the running service is
L{smtpproxy.tap}.
"""

import pwd
import re
import sys

from twisted.python import usage

from smtpproxy import manual
from smtpproxy._version import __version__
from smtpproxy.config import BARE_LF, UPSTREAM_TLS, Limits, Policy, ProxyConfig, Upstream, networks
from smtpproxy.logs import LEVELS
from smtpproxy.startup import check_http_url, fail
from smtpproxy.tls import ReloadableContext, TLSFilesError, load_trust_root, policy_from_options

_LISTEN_TLS = re.compile(r"^--listen_tls(?==|$)")

_POSITIVE = ("api_connections", "api_queue", "header_memory", "upstream_pool_messages")
"""Options that cannot be 0: no API request, or no message, could ever pass."""

_defaults = Limits()
_policy = Policy("")
_kept = Upstream("", 0)

def _upstream(options):
    """
    The L{Upstream} the options describe.  The CA and password files are read
    here, before privileges drop; anything unusable is a start-up error.
    """
    if options["upstream_tls"] not in UPSTREAM_TLS:
        fail(f"--upstream_tls must be one of {', '.join(UPSTREAM_TLS)}")
    trust_root = None
    if options["upstream_ca"] is not None:
        try:
            trust_root = load_trust_root(options["upstream_ca"])
        except TLSFilesError as e:
            fail(str(e))
    try:
        return Upstream(
            host=options["tohost"],
            port=options["toport"],
            timeout=options["upstream_timeout"],
            connect_timeout=options["upstream_timeout"],
            tls=options["upstream_tls"],
            trust_root=trust_root,
            username=options["upstream_user"],
            password=_password(options),
            tls_policy=policy_from_options(options, "upstream_"),
            xclient=bool(options["upstream_xclient"]),
            pool_idle=options["upstream_pool_idle"],
            pool_timeout=options["upstream_pool_timeout"],
            pool_messages=options["upstream_pool_messages"],
        )
    except ValueError as e:
        fail(str(e))


def _password(options):
    """
    C{--upstream_password}, or the first line of C{--upstream_password_file}:
    a file keeps the secret out of C{ps} and shell history.
    """
    path = options["upstream_password_file"]
    if path is None:
        return options["upstream_password"]
    if options["upstream_password"] is not None:
        fail("give --upstream_password or --upstream_password_file, not both")
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        fail(f"cannot read password file {path}: {e.strerror}")
    except UnicodeDecodeError:
        fail(f"password file {path} is not UTF-8")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "An SMTP submission proxy that asks a policy API before relaying. See --man."

    optFlags = [
        ["credentials", None, "Show AUTH data in the smtplog (exposes passwords)."],
        ["verify_recipients", None,
         "Ask the upstream about each recipient at RCPT time and relay its refusal there."],
        ["upstream_xclient", None,
         "Tell an upstream that offers XCLIENT the real client (address, port, HELO, login)."],
    ]
    optParameters = [
        ["user", None, None, "Drop privileges to this user after start."],
        ["tohost", None, None, "Upstream SMTP server host (mandatory)."],
        ["toport", None, None, "Upstream SMTP server port (mandatory).", int],
        ["tls_cert", None, None, "PEM certificate (chain) for STARTTLS (mandatory)."],
        ["tls_key", None, None, "PEM private key for STARTTLS (mandatory)."],
        ["tls_min_version", None, "1.2", "Lowest TLS version for clients: 1.0, 1.1, 1.2 or 1.3."],
        ["tls_ciphers", None, None,
         "OpenSSL cipher string for TLS 1.2 and below [default: Mozilla intermediate]."],
        ["api", None, None, "Policy API URL (mandatory)."],
        ["api_timeout", None, 30.0, "Seconds for one whole API exchange.", float],
        ["api_ca", None, None, "CA bundle for an https API [default: system store]."],
        ["api_idle_timeout", None, _policy.idle_timeout,
         "Seconds an idle API connection is kept (below the API's keep-alive timeout).", float],
        ["api_connections", None, _policy.connections, "API requests at once.", int],
        ["api_queue", None, _policy.queue,
         "API requests that may wait for a connection (past it: 451).", int],
        ["auth_api", None, None,
         "Login API URL: check each AUTH there (535 for a wrong password) "
         "[default: off, the --api judges the password with each message]."],
        ["upstream_timeout", None, 60.0, "Seconds per upstream step.", float],
        ["upstream_pool_idle", None, _kept.pool_idle,
         "Upstream connections kept idle for the next message; 0: one connection per message.",
         int],
        ["upstream_pool_timeout", None, _kept.pool_timeout,
         "Seconds a kept upstream connection may stay idle before QUIT.", float],
        ["upstream_pool_messages", None, _kept.pool_messages,
         "Messages one upstream connection carries before QUIT.", int],
        ["verify_cache_time", None, 60.0,
         "Seconds a --verify_recipients verdict (accepted, or refused 5xx) is reused; 0: never.",
         float],
        ["upstream_tls", None, "none", "TLS toward the upstream: none, starttls or tls (implicit)."],
        ["upstream_ca", None, None, "CA bundle for the upstream's certificate [default: system store]."],
        ["upstream_tls_min_version", None, "1.2", "Lowest TLS version toward the upstream."],
        ["upstream_tls_ciphers", None, None,
         "Cipher string toward the upstream [default: Mozilla intermediate]."],
        ["upstream_user", None, None, "Log in to the upstream (AUTH) as this user; needs upstream TLS."],
        ["upstream_password", None, None, "Password for --upstream_user (visible in ps: prefer the file)."],
        ["upstream_password_file", None, None, "File whose first line is the upstream password."],
        ["hostname", None, None, "Name in the greeting and toward the upstream [default: FQDN]."],
        ["max_recipients", None, _defaults.max_recipients, "Recipients per message.", int],
        ["max_message_size", None, _defaults.max_message_size, "Bytes per message.", int],
        ["max_header_size", None, _defaults.max_header_size, "Bytes of header block.", int],
        ["header_memory", None, _defaults.header_memory,
         "Bytes of header blocks held in memory by all clients at once (past it: 452).", int],
        ["max_line_length", None, _defaults.max_line_length,
         "Bytes per command line (longer: 500 5.5.6).", int],
        ["bare_lf", None, _defaults.bare_lf,
         "A line ended by a bare LF: normalize (a line end, as CRLF) or reject "
         "(500 5.5.2 for a command, 550 5.6.0 for a message).  A bare CR is always refused."],
        ["spool_memory", None, _defaults.spool_memory,
         "Bytes of a message kept in memory before it is spooled to a file.", int],
        ["max_connections", None, _defaults.max_connections, "Client connections in all.", int],
        ["max_connections_per_ip", None, _defaults.max_connections_per_ip,
         "Client connections from one address.", int],
        ["max_auth_failures", None, _defaults.max_auth_failures,
         "Failed logins (535) from one address that lock it out (421).", int],
        ["auth_failure_window", None, _defaults.auth_failure_window,
         "Seconds the failed logins are counted in, and the lock-out lasts.", float],
        ["limit_exempt", None, ",".join(str(n) for n in _defaults.limit_exempt),
         "Networks (CIDR[,CIDR...]) no per-address limit applies to; empty for none."],
        ["idle_timeout", None, _defaults.idle_timeout, "Seconds per command after TLS.", float],
        ["pretls_timeout", None, _defaults.pretls_timeout,
         "Seconds from connect to the first command inside TLS.", float],
        ["data_timeout", None, _defaults.data_timeout, "Seconds without data during DATA.", float],
        ["drain_timeout", None, 30.0,
         "Seconds SIGTERM waits for messages past their final dot.", float],
        ["logpath", None, None, "Main log file [default: stderr]."],
        ["loglevel", None, "info", "debug, info, warn, error or fatal."],
        ["smtplog", None, None, "File for a transcript of every command and reply."],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics on this address [default: off]."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["listen_tls"] = []

    def opt_listen(self, addr):
        """Address to listen on: ip:port, [v6]:port or an endpoint string (repeatable)."""
        self["listen"].append(addr)

    def parseOptions(self, options=None):
        """
        Accept C{--listen_tls}, the spelling of every other option, too:
        usage.Options names an C{opt_} method's option C{--listen-tls}
        (L{getUsage} shows the underscore spelling).
        """
        arguments = sys.argv[1:] if options is None else options
        super().parseOptions([_LISTEN_TLS.sub("--listen-tls", a) for a in arguments])

    def getUsage(self, width=None):
        return super().getUsage(width).replace("--listen-tls=", "--listen_tls=")

    def opt_listen_tls(self, addr):
        """Address for implicit-TLS submission, port 465 style (RFC 8314; repeatable)."""
        self["listen_tls"].append(addr)

    opt_h = usage.Options.opt_help
    """C{-h}: what the original documents next to C{--help}; usage.Options
    leaves it out because other programs' C{-h} is a host option."""

    def opt_version(self):
        """Print the version and exit."""
        print(f"smtpproxy {__version__}")
        sys.exit(0)

    def opt_man(self):
        """Print the manual and exit."""
        print(manual.text(self))
        sys.exit(0)

    def postOptions(self):
        missing = [
            "--" + name
            for name in ("tohost", "toport", "tls_cert", "tls_key", "api")
            if self[name] is None
        ]
        if not (self["listen"] or self["listen_tls"]):
            missing.insert(0, "--listen or --listen_tls")
        if missing:
            fail("missing mandatory option " + ", ".join(missing) + " (see --help)")
        check_http_url("api", self["api"])
        if self["auth_api"] is not None:
            check_http_url("auth_api", self["auth_api"])
        if self["loglevel"] not in LEVELS:
            fail(f"--loglevel must be one of {', '.join(LEVELS)}")
        for name in _POSITIVE:
            if self[name] < 1:
                fail(f"--{name} must be at least 1 (not {self[name]})")
        if self["upstream_pool_idle"] < 0 or self["upstream_pool_timeout"] <= 0:
            fail("--upstream_pool_idle must be 0 or more and --upstream_pool_timeout above 0")
        if self["bare_lf"] not in BARE_LF:
            fail(f"--bare_lf must be one of {', '.join(BARE_LF)}")
        if self["user"] is not None:
            try:
                self["passwd"] = pwd.getpwnam(self["user"])
            except KeyError:
                fail(f"--user: no such user {self['user']}")
        try:
            self["exempt"] = networks(self["limit_exempt"])
        except ValueError as e:
            fail(f"--limit_exempt: {e}")
        try:
            self["tls"] = ReloadableContext(
                self["tls_cert"], self["tls_key"], policy_from_options(self))
        except TLSFilesError as e:
            fail(str(e))
        self["upstream"] = _upstream(self)


def config_from(options):
    """The L{ProxyConfig} the options describe."""
    hostname = {} if options["hostname"] is None else {"hostname": options["hostname"]}
    return ProxyConfig(
        policy=Policy(
            url=options["api"], timeout=options["api_timeout"], ca_path=options["api_ca"],
            idle_timeout=options["api_idle_timeout"], connections=options["api_connections"],
            queue=options["api_queue"], auth_url=options["auth_api"],
        ),
        upstream=options["upstream"],
        tls=options["tls"],
        limits=Limits(
            max_recipients=options["max_recipients"],
            max_message_size=options["max_message_size"],
            max_header_size=options["max_header_size"],
            header_memory=options["header_memory"],
            max_line_length=options["max_line_length"],
            bare_lf=options["bare_lf"],
            spool_memory=options["spool_memory"],
            max_connections=options["max_connections"],
            max_connections_per_ip=options["max_connections_per_ip"],
            max_auth_failures=options["max_auth_failures"],
            auth_failure_window=options["auth_failure_window"],
            limit_exempt=options["exempt"],
            idle_timeout=options["idle_timeout"],
            pretls_timeout=options["pretls_timeout"],
            data_timeout=options["data_timeout"],
        ),
        transcript=options["smtplog"] is not None,
        log_credentials=options["credentials"],
        verify_recipients=bool(options["verify_recipients"]),
        verify_cache_time=options["verify_cache_time"],
        **hostname,
    )
