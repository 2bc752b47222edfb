# -*- test-case-name: tests.test_tap -*-
"""
The running proxy under twistd: C{twistd -n smtpproxy --listen ...}.

L{makeService} takes the parsed L{smtpproxy.options.Options}, opens the
log files before twistd drops privileges, and listens on every C{--listen}
endpoint with a L{Proxy}, the same object embedding applications use: at
once, so that a port that cannot be opened stops the start
(L{smtpproxy.startup}).  L{ProxyService} is what runs: the signals,
the log observer and user for twistd, and the drain at shutdown.
"""

import os
import pwd
import signal

from twisted.application.service import IProcess, MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import ILogObserver, Logger
from twisted.web.server import Site

from smtpproxy.descriptors import guard, raise_limit
from smtpproxy.health import Readiness, add_pages, tcp_check
from smtpproxy.logs import LEVELS, LogFile, LogRouter, main_log, reopen
from smtpproxy.memory import TRIM_INTERVAL, trimmer
from smtpproxy.options import config_from
from smtpproxy.proxy import Proxy
from smtpproxy.startup import fail, listen
from smtpproxy.tls import TLSFilesError
from smtpproxy.upstream import probe as upstream_probe

log = Logger()


class ProxyService(MultiService):
    """
    The L{Proxy} (its listeners and sessions), plus what twistd must learn
    from the plugin: where to log and which user to become (docs/twisted.rst
    fight I), and the signals an operator sends: SIGTERM drains, SIGHUP
    reloads the certificate, SIGUSR1 reopens the log files (after logrotate
    moved them).

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

    @param proxy: the L{Proxy}, listening.
    @param reactor: the reactor, to stop and to run signal work in.
    @param drain_timeout: seconds the drain waits for messages in flight.
    @param log_files: the L{LogFile}s that SIGUSR1 reopens.
    """

    def __init__(self, proxy, observer, passwd, reactor, drain_timeout, log_files=()):
        super().__init__()
        self.after_drain = []
        self.proxy = proxy
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
        warning = raise_limit(self.proxy.config.limits.max_connections)
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
            self.proxy.factory.cut_off(everything=True)

    def _hangup(self, number, frame):
        self._reactor.callFromThread(self.proxy.config.tls.reload)

    def _user1(self, number, frame):
        self._reactor.callFromThread(self.reopen_logs)

    def reopen_logs(self):
        """Reopen every log file (see L{reopen})."""
        reopen(self.log_files, (self.passwd or pwd.getpwuid(os.getuid())).pw_name)

    def stopService(self):
        """
        Stop the background checks, then the proxy (L{Proxy.drain}, then
        L{Proxy.close}), then the metrics listener; the Deferred fires when
        all is done.
        """
        self._stopping = True
        if self._trim is not None and self._trim.running:
            self._trim.stop()
        stopped = super().stopService()
        stopped.addBoth(lambda _: self.proxy.drain(self.drain_timeout))
        stopped.addBoth(lambda _: self.proxy.close())
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
        proxy = Proxy(config_from(options), reactor, options["listen"], options["listen_tls"])
    except TLSFilesError as e:
        fail(f"--api_ca: {e}")
    service = ProxyService(
        proxy, observer, options.get("passwd"), reactor, options["drain_timeout"],
        [f for f in (main, transcript) if isinstance(f, LogFile)],
    )
    listeners = list(proxy.listeners)
    if options["metrics"] is not None:
        site = _quiet_site(_metrics_pages(proxy.factory, reactor, service))
        listeners.append(("metrics", options["metrics"], site, None))
    for option, address, served, refusal in listeners:
        try:
            endpoint, served = proxy.endpoint(address, served)
        except (ValueError, KeyError, IndexError) as e:
            fail(f"--{option}={address}: not a usable address or endpoint ({e!r})")
        listening = listen(option, address, endpoint, served)
        if option == "metrics":
            guard(listening.port, proxy.factory.descriptors_exhausted, refusal)
            # Up until the process exits: a balancer sees the drain on /readyz.
            listening.startService()
            service.after_drain.append(listening)
        else:
            proxy.serving(listening.port, refusal)
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
