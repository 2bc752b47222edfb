"""
The twistd plugin's options and service: C{twistd -n smtpproxy --listen ...}.

L{Options} keeps the original Perl proxy's option names (SPEC section 7);
L{makeService} turns them into a L{ProxyConfig}, reads every file (TLS
certificate and key, logs) before twistd drops privileges, and listens on
every C{--listen} endpoint with the factory from L{build_factory}, the same
one embedding applications use.
"""

import pwd
import re
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IProcess, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver
from twisted.python import usage

from smtpproxy import manual
from smtpproxy._version import __version__
from smtpproxy.config import Limits, Policy, ProxyConfig, Upstream
from smtpproxy.logs import LEVELS, LogRouter
from smtpproxy.server import build_factory
from smtpproxy.tls import TLSFilesError, load_context

_IPV4_PORT = re.compile(r"^((?:\d{1,3}\.){3}\d{1,3})?:(\d+)$")
_IPV6_PORT = re.compile(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$")

_defaults = Limits()


def endpoint_description(listen):
    """
    A Twisted endpoint string for a C{--listen} value.

    The original's C{ip:port} and C{[v6]:port} forms (and C{:port} for every
    address) are translated; anything else is taken as an endpoint string
    (C{tcp:587}, C{haproxy:tcp:587}, C{systemd:domain=INET:index=0}...).
    """
    if m := _IPV4_PORT.match(listen):
        host, port = m.groups()
        return f"tcp:{port}:interface={host}" if host else f"tcp:{port}"
    if m := _IPV6_PORT.match(listen):
        host, port = m.groups()
        return f"tcp6:{port}:interface=" + host.replace(":", r"\:")
    return listen


def fail(message):
    """One clear line on stderr and a non-zero exit (SPEC section 6)."""
    sys.stderr.write(f"smtpproxy: {message}\n")
    raise SystemExit(2)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "An SMTP submission proxy that asks a policy API before relaying. See --man."

    optFlags = [
        ["credentials", None, "Show AUTH data in the smtplog (exposes passwords)."],
    ]
    optParameters = [
        ["user", None, None, "Drop privileges to this user after start."],
        ["tohost", None, None, "Upstream SMTP server host (mandatory)."],
        ["toport", None, None, "Upstream SMTP server port (mandatory).", int],
        ["tls_cert", None, None, "PEM certificate (chain) for STARTTLS (mandatory)."],
        ["tls_key", None, None, "PEM private key for STARTTLS (mandatory)."],
        ["api", None, None, "Policy API URL (mandatory)."],
        ["api_timeout", None, 30.0, "Seconds for one whole API exchange.", float],
        ["api_ca", None, None, "CA bundle for an https API [default: system store]."],
        ["upstream_timeout", None, 60.0, "Seconds per upstream step.", float],
        ["hostname", None, None, "Name in the greeting and toward the upstream [default: FQDN]."],
        ["max_recipients", None, _defaults.max_recipients, "Recipients per message.", int],
        ["max_message_size", None, _defaults.max_message_size, "Bytes per message.", int],
        ["max_header_size", None, _defaults.max_header_size, "Bytes of header block.", int],
        ["idle_timeout", None, _defaults.idle_timeout, "Seconds per command after TLS.", float],
        ["pretls_timeout", None, _defaults.pretls_timeout, "Seconds to reach STARTTLS.", float],
        ["logpath", None, None, "Main log file [default: stderr]."],
        ["loglevel", None, "info", "debug, info, warn, error or fatal."],
        ["smtplog", None, None, "File for a transcript of every command and reply."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value):
        """Address to listen on: ip:port, [v6]:port or an endpoint string (repeatable)."""
        self["listen"].append(value)

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
        if not self["listen"]:
            missing.insert(0, "--listen")
        if missing:
            fail("missing mandatory option " + ", ".join(missing) + " (see --help)")
        if self["loglevel"] not in LEVELS:
            fail(f"--loglevel must be one of {', '.join(LEVELS)}")
        if self["user"] is not None:
            try:
                self["passwd"] = pwd.getpwnam(self["user"])
            except KeyError:
                fail(f"--user: no such user {self['user']}")
        try:
            self["tls"] = load_context(self["tls_cert"], self["tls_key"])
        except TLSFilesError as e:
            fail(str(e))


def config_from(options):
    """The L{ProxyConfig} the options describe."""
    hostname = {} if options["hostname"] is None else {"hostname": options["hostname"]}
    return ProxyConfig(
        policy=Policy(url=options["api"], timeout=options["api_timeout"], ca_path=options["api_ca"]),
        upstream=Upstream(
            host=options["tohost"], port=options["toport"], timeout=options["upstream_timeout"]
        ),
        tls=options["tls"],
        limits=Limits(
            max_recipients=options["max_recipients"],
            max_message_size=options["max_message_size"],
            max_header_size=options["max_header_size"],
            idle_timeout=options["idle_timeout"],
            pretls_timeout=options["pretls_timeout"],
        ),
        transcript=options["smtplog"] is not None,
        log_credentials=options["credentials"],
        **hostname,
    )


class ProxyService(MultiService):
    """
    The listeners, plus what twistd must learn from the plugin: where to
    log and which user to become (TWISTED-NOTES fight I).
    """

    def __init__(self, factory, observer, passwd):
        super().__init__()
        self.factory = factory
        self.observer = observer
        self.passwd = passwd

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        parent.setComponent(ILogObserver, self.observer)
        if self.passwd is not None:
            process = IProcess(parent)
            process.uid, process.gid = self.passwd.pw_uid, self.passwd.pw_gid

    def stopService(self):
        stopped = super().stopService()
        stopped.addBoth(lambda _: self.factory.close())
        return stopped


def _open(path):
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as e:
        fail(f"cannot open log file {path}: {e.strerror}")


def makeService(options, reactor=None):
    """The whole proxy as a twistd service."""
    if reactor is None:
        from twisted.internet import reactor
    main = sys.stderr if options["logpath"] is None else _open(options["logpath"])
    transcript = None if options["smtplog"] is None else _open(options["smtplog"])
    observer = LogRouter(main, LEVELS[options["loglevel"]], transcript)
    factory = build_factory(config_from(options), reactor)
    service = ProxyService(factory, observer, options.get("passwd"))
    for listen in options["listen"]:
        try:
            endpoint = serverFromString(reactor, endpoint_description(listen))
        except (ValueError, KeyError, IndexError) as e:
            fail(f"--listen={listen}: not a usable address or endpoint ({e!r})")
        StreamServerEndpointService(endpoint, factory).setServiceParent(service)
    return service
