"""
Tests for L{smtpproxy.tap}: the service twistd runs, built from the options.
"""

import io

from twisted.application.service import Application, IProcess
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site
from twisted.trial.unittest import TestCase

from smtpproxy import tap
from smtpproxy.haproxy import _HeaderFirstFactory
from smtpproxy.options import config_from
from smtpproxy.tls import ReloadableContext
from tests.support.options import OptionsTestCase
from tests.support.twistd import twistd_command, twistd_environment


class ServiceTests(OptionsTestCase):
    def test_limits_and_drain(self):
        options = self.parse(self.arguments(
            max_connections=5, max_connections_per_ip=2, data_timeout=60, drain_timeout=7,
            max_line_length=512, spool_memory=4096))
        limits = config_from(options).limits
        self.assertEqual(
            (limits.max_connections, limits.max_connections_per_ip, limits.data_timeout,
             limits.max_line_length, limits.spool_memory),
            (5, 2, 60, 512, 4096))
        self.assertIsInstance(options["tls"], ReloadableContext)
        service = tap.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(service.drain_timeout, 7)

    def test_unreadable_api_ca(self):
        """One line before anything listens (the file is read once, by the API client)."""
        options = self.parse(self.arguments(api_ca="/nonexistent/ca.pem"))
        with self.assertRaises(SystemExit) as raised:
            tap.makeService(options, reactor=MemoryReactorClock())
        line, code = self.stderr.getvalue(), raised.exception.code
        self.assertEqual(
            line, "smtpproxy: --api_ca: cannot read CA file /nonexistent/ca.pem: No such file or directory\n")
        self.assertEqual(code, 2)

    def test_service(self):
        """Listeners, the log observer and the user reach twistd's application."""
        opened = []
        self.patch(tap, "_open", lambda path, mode=0o640: opened.append(path) or io.StringIO())
        options = self.parse(self.arguments(user="nobody", logpath="main.log", smtplog="smtp.log"))
        service = tap.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(opened, ["main.log", "smtp.log"])
        self.assertEqual(len(service.proxy.ports), 1)
        application = Application("test")
        service.setServiceParent(application)
        self.assertIsInstance(application.getComponent(ILogObserver), tap.LogRouter)
        self.assertEqual(IProcess(application).uid, 65534)

    def test_listeners(self):
        """Plain, implicit-TLS and metrics listeners, each on its endpoint."""
        reactor = MemoryReactorClock()
        options = self.parse(self.arguments(listen_tls="127.0.0.1:465", metrics="tcp:9100"))
        service = tap.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = [(port, factory) for port, factory, _, _ in reactor.tcpServers]
        self.assertEqual([port for port, _ in ports], [0, 465, 9100])
        self.assertIsInstance(ports[1][1], TLSMemoryBIOFactory)
        self.assertIsInstance(ports[2][1], Site)

    def test_haproxy_listener(self):
        """A haproxy: endpoint greets only after the PROXY header (smtpproxy.haproxy)."""
        reactor = MemoryReactorClock()
        options = self.parse(self.arguments(listen="haproxy:tcp:2525:interface=127.0.0.1"))
        service = tap.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (port, factory, _, interface), = reactor.tcpServers
        self.assertEqual((port, interface), (2525, "127.0.0.1"))
        self.assertIsInstance(factory, _HeaderFirstFactory)

    def test_bad_endpoint(self):
        options = self.parse(self.arguments(listen="bogus:thing"))
        with self.assertRaises(SystemExit):
            tap.makeService(options, reactor=MemoryReactorClock())
        self.assertIn("--listen=bogus:thing", self.stderr.getvalue())




class TwistdHelpTests(TestCase):
    """The real C{twistd smtpproxy}: C{-h} as the original documents it."""

    def run_twistd(self, *arguments):
        command = twistd_command("smtpproxy", *arguments)
        return getProcessOutputAndValue(
            command[0], command[1:], env=twistd_environment(), reactor=reactor)

    @defer.inlineCallbacks
    def test_h_is_help(self):
        short = yield self.run_twistd("-h")
        long = yield self.run_twistd("--help")
        self.assertEqual(short, long)
        out, err, code = short
        self.assertEqual((err, code), (b"", 0))
        self.assertIn(b"-h, --help", out)
        self.assertIn(b"--max_line_length=", out)
