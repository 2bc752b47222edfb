# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd -n smtpproxy --listen ...}.

L{Options} keeps the original Perl proxy's option names (docs/protocol.rst section 7);
L{makeService} turns them into a L{ProxyConfig}, reads every file (TLS
certificate and key, upstream CA and password, logs) before twistd drops
privileges, and listens on every C{--listen} endpoint with the factory from
L{build_factory}, the same one embedding applications use: at once, so
that a port that cannot be opened stops the start (L{smtpproxy.startup}).
"""

import os
import pwd
import re
import signal
import sys

from twisted.application.service import IProcess, MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.server import Site

from smtpproxy import haproxy, manual
from smtpproxy._version import __version__
from smtpproxy.config import BARE_LF, UPSTREAM_TLS, Limits, Policy, ProxyConfig, Upstream, networks
from smtpproxy.descriptors import REFUSAL, guard, raise_limit
from smtpproxy.endpoints import endpoint_description
from smtpproxy.health import Readiness, add_pages, tcp_check
from smtpproxy.logs import LEVELS, LogFile, LogRouter, main_log, reopen
from smtpproxy.memory import TRIM_INTERVAL, trimmer
from smtpproxy.server import build_factory
from smtpproxy.upstream import probe as upstream_probe
from smtpproxy.startup import check_http_url, fail, listen
from smtpproxy.tls import ReloadableContext, TLSFilesError, load_trust_root, policy_from_options

_LISTEN_TLS = re.compile(r"^--listen_tls(?==|$)")

_POSITIVE = ("api_connections", "api_queue", "header_memory", "upstream_pool_messages")
"""Options that cannot be 0: no API request, or no message, could ever pass."""

_defaults = Limits()
_policy = Policy("")
_kept = Upstream("", 0)

log = Logger()


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

    def opt_listen(self, value):
        """Address to listen on: ip:port, [v6]:port or an endpoint string (repeatable)."""
        self["listen"].append(value)

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

    def opt_listen_tls(self, value):
        """Address for implicit-TLS submission, port 465 style (RFC 8314; repeatable)."""
        self["listen_tls"].append(value)

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


class ProxyService(MultiService):
    """
    The listeners, plus what twistd must learn from the plugin: where to
    log and which user to become (docs/twisted.rst fight I), and the signals
    an operator sends: SIGTERM drains, SIGHUP reloads the certificate,
    SIGUSR1 reopens the log files (after logrotate moved them).

    The drain is twistd's ordinary shutdown: twistd stops the application
    in a "before shutdown" trigger, and the reactor waits for the Deferred
    L{stopService} returns before it stops (Twisted 26.10,
    C{twisted.internet.base._ThreePhaseEvent.fireEvent}).  SIGTERM (and SIGINT)
    are caught here instead of by the reactor because the reactor's handler
    records the signal, and twistd then kills itself with it once the
    reactor has stopped (C{twisted.scripts.twistd.run},
    C{app._exitWithSignal}): the exit status would not be 0.

    The handlers stay for the whole drain: a certificate reload hook or
    logrotate's SIGUSR1 landing during a restart must not kill a process
    that holds messages past their final dot (each would then be delivered
    twice: the upstream has it, the client never heard).  SIGHUP and
    SIGUSR1 keep working; a second SIGTERM or SIGINT ends the drain at once
    (L{smtpproxy.server.ProxyFactory.cut_off}), with a log line.

    @param reactor: the reactor, to stop and to run signal work in.
    @param drain_timeout: seconds the drain waits for messages in flight.
    @param log_files: the L{LogFile}s that SIGUSR1 reopens.
    """

    def __init__(self, factory, observer, passwd, reactor, drain_timeout, log_files=()):
        super().__init__()
        self.after_drain = []
        self.factory = factory
        self.observer = observer
        self.passwd = passwd
        self.drain_timeout = drain_timeout
        self._reactor = reactor
        self.log_files = log_files
        self._catching = False
        self._stopping = False
        self._trim = None
        self._previous = {}

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        parent.setComponent(ILogObserver, self.observer)
        if self.passwd is not None:
            process = IProcess(parent)
            process.uid, process.gid = self.passwd.pw_uid, self.passwd.pw_gid

    def startService(self):
        """
        Raise the open-file limit (L{raise_limit}: it is the first to run
        out under load), then serve.
        """
        warning = raise_limit(self.factory.config.limits.max_connections)
        if warning is not None:
            log.warn(warning)
        self._trim = trimmer(self._reactor)
        if self._trim is not None:
            self._trim.start(TRIM_INTERVAL, now=False)
        super().startService()
        self._reactor.callWhenRunning(self._catch_signals)

    def _catch_signals(self):
        """
        Take over SIGTERM, SIGHUP and SIGUSR1: once the reactor runs,
        since the reactor installs its own SIGTERM handler while starting.
        """
        if not self.running:
            return
        self._catching = True
        for number, handler in _HANDLERS.items():
            self._previous[number] = signal.signal(number, getattr(self, handler))
        log.info(
            "running: SIGTERM drains (at most {timeout} s, longer for messages whose final "
            "dot went upstream; a second SIGTERM ends it), SIGHUP reloads the TLS "
            "certificate, SIGUSR1 reopens the log files",
            timeout=self.drain_timeout,
        )

    def _terminate(self, number, frame):
        """
        Signal handlers interrupt the reactor anywhere, so the work is
        handed to it (as Twisted's own handlers do).
        """
        self._reactor.callFromThread(self._stop, signal.Signals(number).name)

    def _stop(self, name):
        """The first SIGTERM or SIGINT drains; another ends the drain now."""
        if not self._stopping:
            self._stopping = True
            log.info("{signal}: draining", signal=name)
            self._reactor.stop()
        else:
            log.warn("{signal} again: ending the drain now", signal=name)
            self.factory.cut_off(everything=True)

    def _hangup(self, number, frame):
        self._reactor.callFromThread(self.factory.config.tls.reload)

    def _user1(self, number, frame):
        self._reactor.callFromThread(self.reopen_logs)

    def reopen_logs(self):
        """Reopen every log file (see L{reopen})."""
        reopen(self.log_files, (self.passwd or pwd.getpwuid(os.getuid())).pw_name)

    def stopService(self):
        """
        Stop listening, drain the sessions, then close the shared clients;
        the Deferred fires when all is done.
        """
        self._stopping = True
        if self._trim is not None and self._trim.running:
            self._trim.stop()
        stopped = super().stopService()
        stopped.addBoth(lambda _: self.factory.drain(self.drain_timeout))
        stopped.addBoth(lambda _: self.factory.close())
        stopped.addBoth(lambda _: gatherResults([s.stopService() for s in self.after_drain]))
        return stopped.addBoth(self._release_signals)

    def _release_signals(self, result):
        """
        Give the signals back once the drain is over (an embedding
        application's).  A SIGHUP or SIGUSR1 whose previous action was the
        default one (which ends the process) is ignored instead: a certbot
        hook or logrotate signalling between the drain's end and the exit
        must not turn a clean stop into death by signal.
        """
        if self._catching:
            self._catching = False
            for number, previous in self._previous.items():
                if number in (signal.SIGHUP, signal.SIGUSR1) and previous == signal.SIG_DFL:
                    previous = signal.SIG_IGN
                signal.signal(number, previous)
        return result


_HANDLERS = {
    signal.SIGTERM: "_terminate",
    signal.SIGINT: "_terminate",
    signal.SIGHUP: "_hangup",
    signal.SIGUSR1: "_user1",
}


def _open(path, mode=0o640):
    try:
        return LogFile(path, mode)
    except OSError as e:
        fail(f"cannot open log file {path}: {e.strerror}")


def makeService(options, reactor=None):
    """The whole proxy as a twistd service."""
    if reactor is None:
        from twisted.internet import reactor
    main = main_log(options["logpath"], options.parent or {}, _open)
    private = 0o600 if options["credentials"] else 0o640
    transcript = None if options["smtplog"] is None else _open(options["smtplog"], private)
    observer = LogRouter(main, LEVELS[options["loglevel"]], transcript)
    try:
        factory = build_factory(config_from(options), reactor)
    except TLSFilesError as e:
        fail(f"--api_ca: {e}")
    service = ProxyService(
        factory, observer, options.get("passwd"), reactor, options["drain_timeout"],
        [f for f in (main, transcript) if isinstance(f, LogFile)],
    )
    listeners = [("listen", address, factory) for address in options["listen"]]
    implicit = TLSMemoryBIOFactory(factory.config.tls, False, factory)
    listeners += [("listen_tls", address, implicit) for address in options["listen_tls"]]
    if options["metrics"] is not None:
        listeners.append(("metrics", options["metrics"], _quiet_site(_metrics_pages(factory, reactor, service))))
    for option, address, served in listeners:
        try:
            endpoint, served = haproxy.server(
                reactor, endpoint_description(address), served, options["pretls_timeout"])
        except (ValueError, KeyError, IndexError) as e:
            fail(f"--{option}={address}: not a usable address or endpoint ({e!r})")
        listening = listen(option, address, endpoint, served)
        refusal = None if option == "metrics" else REFUSAL if option == "listen" else b""
        guard(listening.port, factory.descriptors_exhausted, refusal)
        if option == "metrics":
            # Up until the process exits: a balancer sees the drain on /readyz.
            listening.startService()
            service.after_drain.append(listening)
        else:
            listening.setServiceParent(service)
    return service


def _metrics_pages(factory, reactor, service):
    """
    C{/metrics}, C{/healthz} and C{/readyz} (L{smtpproxy.health}), whose
    background checks run as part of C{service}.
    """
    config = factory.config
    checks = {"upstream": lambda: upstream_probe(
        reactor, config.upstream, config.hostname, logged=False).addCallback(
            factory.capabilities.learn)}
    checks["policy API"] = tcp_check(reactor, config.policy.url)
    if config.policy.auth_url is not None:
        checks["login API"] = tcp_check(reactor, config.policy.auth_url)
    readiness = Readiness(reactor, checks, lambda: factory.draining)
    readiness.setServiceParent(service)
    root = factory.metrics.resource()
    add_pages(root, readiness)
    return root


def _quiet_site(resource):
    """A web site without access log: a metrics scrape every few seconds is noise."""
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None
    return site
