"""
Pins: one test for each name in Twisted that the proxy (or its test support)
relies on although Twisted does not promise to keep it: private names,
undocumented attributes, and the steps of Twisted's SMTP client state
machine that L{smtpproxy.upstream.UpstreamClient} and its subclasses replace.

When a Twisted upgrade changes one, its test fails with a message naming
the Twisted name and the code that relies on it.  docs/twisted.rst says why
each one is used and lists these tests.
"""

import contextlib
import inspect
import io

import twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer


class PinTestCase(SynchronousTestCase):
    @contextlib.contextmanager
    def reliedOn(self, name, user):
        """
        Turn any failure inside the block into one message naming the
        Twisted C{name} and the C{user} in this project that needs it.
        """
        try:
            yield
        except Exception as e:
            self.fail(
                f"Twisted {twisted.__version__} changed {name}, which {user} relies on "
                f"(see docs/twisted.rst): {e!r}"
            )


def _connected(protocol, transport=None):
    transport = StringTransport() if transport is None else transport
    protocol.makeConnection(transport)
    return transport


class _Recorder:
    """A callable that records its arguments."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


class SMTPClientStatePins(PinTestCase):
    """The state machine of L{smtp.SMTPClient} that RelaySender steers."""

    def test_replyDispatch(self):
        with self.reliedOn("SMTPClient._expected/_okresponse/_failresponse",
                           "smtpproxy.relay.RelaySender and smtpproxy.verify.CheckingClient"):
            client = smtp.SMTPClient(b"proxy.test")
            _connected(client)
            ok, failed = _Recorder(), _Recorder()
            client._expected, client._okresponse, client._failresponse = [250], ok, failed
            client.lineReceived(b"250-first")
            client.lineReceived(b"250 second")
            client.lineReceived(b"550 5.1.1 no")
            self.assertEqual(ok.calls, [(250, b"first\nsecond")])
            self.assertEqual(failed.calls, [(550, b"5.1.1 no")])

    def test_disconnectFromServer(self):
        with self.reliedOn("SMTPClient._disconnectFromServer",
                           "smtpproxy.relay.RelaySender and smtpproxy.verify.CheckingClient (QUIT)"):
            client = smtp.SMTPClient(b"proxy.test")
            transport = _connected(client)
            client._disconnectFromServer()
            self.assertEqual(transport.value(), b"QUIT\r\n")
            self.assertEqual(client._okresponse, client.smtpState_disconnect)

    def test_heloState(self):
        with self.reliedOn("SMTPClient.smtpState_helo (sends HELO, then smtpState_from)",
                           "smtpproxy.upstream.UpstreamClient.smtpState_helo"):
            client = smtp.SMTPClient(b"proxy.test")
            transport = _connected(client)
            client.smtpState_helo(250, b"hi")
            self.assertEqual(transport.value(), b"HELO proxy.test\r\n")
            self.assertEqual(client._okresponse, client.smtpState_from)

    def test_ehloStateAndHeloFallback(self):
        with self.reliedOn("ESMTPClient.esmtpState_ehlo/esmtpState_serverConfig",
                           "smtpproxy.upstream.UpstreamClient (smtpState_helo, "
                           "esmtpState_serverConfig)"):
            client = smtp.ESMTPClient(None, None, b"proxy.test")
            client.heloFallback = True
            client.requireAuthentication = client.requireTransportSecurity = False
            transport = _connected(client)
            client.esmtpState_ehlo(220, b"hi")
            self.assertEqual(transport.value(), b"EHLO proxy.test\r\n")
            self.assertEqual(client._okresponse, client.esmtpState_serverConfig)
            self.assertEqual(client._failresponse, client.smtpState_helo)
            parameters = list(inspect.signature(client.esmtpState_serverConfig).parameters)
            self.assertEqual(parameters, ["code", "resp"])

    def test_fromStateAfterLogin(self):
        with self.reliedOn("ESMTPClient.smtpState_maybeAuthenticated (235 -> smtpState_from)",
                           "smtpproxy.relay.RelaySender.smtpState_from and "
                           "smtpproxy.verify.CheckingClient.smtpState_from (reached after AUTH)"):
            reached = _Recorder()
            client = smtp.ESMTPClient(None, None, b"proxy.test")
            client.smtpState_from = reached
            client._authinfo = object()
            client.smtpState_maybeAuthenticated(235, b"2.7.0 ok")
            self.assertEqual(reached.calls, [(235, b"2.7.0 ok")])

    def test_dataTransfer(self):
        with self.reliedOn("SMTPClient.smtpState_data/transformChunk/finishedFileTransfer",
                           "smtpproxy.relay.RelaySender (data sent as it is, then the dot)"):
            data = b"x" * 40000 + b"y"
            chunks, finished = [], []

            class Client(smtp.SMTPClient):
                def getMailData(self):
                    return io.BytesIO(data)

                def transformChunk(self, chunk):
                    chunks.append(chunk)
                    return chunk.upper()

                def finishedFileTransfer(self, lastsent):
                    finished.append(lastsent)

            client = Client(b"proxy.test")
            transport = _connected(client)
            client.smtpState_data(354, b"go on")
            while transport.producer is not None:
                transport.producer.resumeProducing()
            self.assertEqual(b"".join(chunks), data)
            self.assertEqual(transport.value(), data.upper())
            self.assertEqual(finished, [b"Y"])  # the last byte sent

    def test_connectionFailedState(self):
        with self.reliedOn("SMTPClient.smtpConnectionFailed (a refused greeting or HELO)",
                           "smtpproxy.upstream.UpstreamClient.smtpState_helo"):
            client = smtp.SMTPClient(b"proxy.test")
            _connected(client)
            self.assertEqual(client._failresponse, client.smtpConnectionFailed)
            self.assertEqual(list(inspect.signature(client.smtpConnectionFailed).parameters),
                             ["code", "resp"])

    def test_sendError(self):
        with self.reliedOn("SMTPClient.sendError (QUIT when not fatal, else drop) and "
                           "SMTPClient.log.str()",
                           "smtpproxy.upstream.UpstreamClient.sendError"):
            client = smtp.SMTPClient(b"proxy.test")
            transport = _connected(client)
            client.sendError(smtp.SMTPClientError(451, b"4.4.1 later"))
            self.assertEqual(transport.value(), b"QUIT\r\n")
            fatal = smtp.SMTPClient(b"proxy.test")
            transport = _connected(fatal)
            fatal.sendError(smtp.SMTPClientError(-1, b"broken", isFatal=True))
            self.assertTrue(transport.disconnecting)
            self.assertIsInstance(fatal.log.str(), bytes)

    def test_timeoutReportsAnError(self):
        with self.reliedOn("SMTPClient.timeoutConnection (reports SMTPTimeoutError)",
                           "smtpproxy.upstream.UpstreamClient.timeoutConnection"):
            errors = []
            client = smtp.SMTPClient(b"proxy.test")
            _connected(client)
            client.sendError = errors.append
            client.timeoutConnection()
            self.assertIsInstance(errors[0], smtp.SMTPTimeoutError)


class SenderFactoryPins(PinTestCase):
    """L{smtp.ESMTPSenderFactory}, as L{smtpproxy.upstream.deliver} builds it."""

    def factory(self, **changes):
        arguments = dict(
            username=None, password=None, fromEmail="", toEmail=[b"a@example.net"],
            file=io.BytesIO(b""), deferred=Deferred(), retries=0, timeout=60,
            contextFactory=None, heloFallback=True, requireAuthentication=False,
            requireTransportSecurity=False,
        )
        arguments.update(changes)
        return smtp.ESMTPSenderFactory(**arguments)

    def test_keywords(self):
        with self.reliedOn("ESMTPSenderFactory's keyword arguments",
                           "smtpproxy.upstream._send"):
            self.factory()

    def test_attributes(self):
        with self.reliedOn("ESMTPSenderFactory.domain/result/sendFinished/fromEmail",
                           "smtpproxy.upstream (_send, UpstreamClient) and smtpproxy.verify"):
            result = Deferred()
            factory = self.factory(deferred=result)
            factory.domain = b"proxy.test"
            factory.fromEmail = b"user@[192.0.2.1]"
            protocol = factory.buildProtocol(None)
            self.assertIs(factory.result, result)
            self.assertIs(factory.sendFinished, False)
            self.assertEqual(protocol.identity, b"proxy.test")
            self.assertIs(protocol.factory, factory)
            self.assertEqual(protocol.timeout, 60)

    def test_finishedSendIsNotReportedAgain(self):
        with self.reliedOn("SMTPSenderFactory.sendFinished (checked before retrying or reporting)",
                           "smtpproxy.upstream.UpstreamClient.connectionLost"):
            result = Deferred()
            factory = self.factory(deferred=result)
            factory.sendFinished = True

            class Connector:
                def connect(self):
                    raise AssertionError("reconnected")

            factory.clientConnectionLost(Connector(), Failure(ConnectionDone()))
            self.assertNoResult(result)


class TimeoutMixinPins(PinTestCase):
    def test_callLaterHook(self):
        with self.reliedOn("TimeoutMixin.callLater (the timer's clock)",
                           "smtpproxy.session.ProxySession and smtpproxy.upstream.UpstreamClient"):
            clock = Clock()
            timed = TimeoutMixin()
            timed.callLater = clock.callLater
            timed.timeoutConnection = _Recorder()
            timed.setTimeout(5)
            clock.advance(5)
            self.assertEqual(timed.timeoutConnection.calls, [()])


@implementer(ITLSTransport)
class _TLSStringTransport(StringTransport):
    def startTLS(self, contextFactory):
        pass


class SMTPServerPins(PinTestCase):
    """L{smtp.ESMTP} as L{smtpproxy.session.ProxySession} builds on it."""

    def session(self, transport=None, **kwargs):
        session = smtp.ESMTP(**kwargs)
        session.callLater = Clock().callLater
        return session, _connected(session, transport)

    def test_greetingAndHost(self):
        with self.reliedOn("SMTP.connectionMade (220 + greeting()) and the SMTP.host setter",
                           "smtpproxy.session.ProxySession (greeting, EHLO reply)"):
            session = smtp.ESMTP()
            session.host = "proxy.test"
            session.callLater = Clock().callLater
            session.greeting = lambda: session.host + b" ESMTP test"
            transport = _connected(session)
            self.assertEqual(session.host, b"proxy.test")
            self.assertEqual(transport.value(), b"220 proxy.test ESMTP test\r\n")

    def test_tlsCapability(self):
        with self.reliedOn("ESMTP.ctx/canStartTLS/startedTLS",
                           "smtpproxy.session.ProxySession (extensions, smtp_STARTTLS)"):
            context = object()
            session, _ = self.session(_TLSStringTransport(), contextFactory=context)
            self.assertIs(session.ctx, context)
            self.assertIs(session.canStartTLS, True)
            self.assertIs(session.startedTLS, False)
            plain, _ = self.session(contextFactory=context)
            self.assertIs(plain.canStartTLS, False)

    def test_extensionsAndMultilineReplies(self):
        with self.reliedOn("ESMTP.listExtensions and SMTP.sendCode (one line per LF)",
                           "smtpproxy.session.ProxySession.smtp_EHLO"):
            session, transport = self.session()
            transport.clear()
            session.extensions = lambda: {b"SIZE": [b"10"], b"PIPELINING": None}
            session.sendCode(250, b"proxy.test Hello\n" + session.listExtensions())
            self.assertEqual(transport.value(),
                             b"250-proxy.test Hello\r\n250-SIZE 10\r\n250 PIPELINING\r\n")


class FakeUpstreamPins(PinTestCase):
    """Twisted's SMTP server internals that tests/support/upstream.py steers."""

    def test_messageHandled(self):
        with self.reliedOn("SMTP._messageHandled(resultList), called at the final dot",
                           "tests/support/upstream.py (_Session._messageHandled)"):
            self.assertEqual(list(inspect.signature(smtp.SMTP._messageHandled).parameters),
                             ["self", "resultList"])
            self.assertIn("_messageHandled", smtp.SMTP.dataLineReceived.__code__.co_names)

    def test_inbodyFlag(self):
        with self.reliedOn("SMTP's name-mangled __inbody flag",
                           "tests/support/upstream.py (_Session.do_DATA)"):
            self.assertIn("_SMTP__inbody", smtp.SMTP.do_DATA.__code__.co_names)
            self.assertIn("_SMTP__inbody", smtp.SMTP.dataLineReceived.__code__.co_names)

    def test_heloField(self):
        with self.reliedOn("SMTP._helo (set by HELO and EHLO, handed to validateFrom by MAIL)",
                           "tests/support/upstream.py (_Session.do_XCLIENT forgets the name)"):
            for method in (smtp.SMTP.do_HELO, smtp.ESMTP.do_EHLO, smtp.SMTP.do_MAIL):
                self.assertIn("_helo", method.__code__.co_names, method.__qualname__)


class _Wrapped(Protocol):
    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class HAProxyPins(PinTestCase):
    """The private PROXY protocol wrapper L{smtpproxy.haproxy} subclasses."""

    def test_wrapper(self):
        with self.reliedOn("twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper "
                           "(_proxyInfo, wrappedProtocol, the rest after the header)",
                           "smtpproxy.haproxy._HeaderFirst"):
            from twisted.protocols.haproxy._wrapper import (
                HAProxyProtocolWrapper,
                HAProxyWrappingFactory,
            )

            factory = HAProxyWrappingFactory(ClientFactory())
            wrapped = _Wrapped()
            wrapper = HAProxyProtocolWrapper(factory, wrapped)
            wrapper.transport = StringTransport()
            wrapper.dataReceived(b"PROXY TCP4 192.0")
            self.assertIsNone(wrapper._proxyInfo)
            wrapper.dataReceived(b".2.7 127.0.0.1 40000 587\r\nEHLO client\r\n")
            self.assertIsNotNone(wrapper._proxyInfo)
            self.assertIs(wrapper.wrappedProtocol, wrapped)
            self.assertEqual(wrapped.received, b"EHLO client\r\n")
            self.assertEqual(wrapper.getPeer().host, "192.0.2.7")
            self.assertIs(HAProxyWrappingFactory.protocol, HAProxyProtocolWrapper)

    def test_factoryRegistry(self):
        with self.reliedOn("HAProxyWrappingFactory(wrappedFactory), registerProtocol, "
                           "unregisterProtocol",
                           "smtpproxy.haproxy (_HeaderFirst.makeConnection/connectionLost)"):
            from twisted.protocols.haproxy._wrapper import (
                HAProxyProtocolWrapper,
                HAProxyWrappingFactory,
            )

            factory = HAProxyWrappingFactory(ClientFactory())
            wrapper = HAProxyProtocolWrapper(factory, _Wrapped())
            factory.registerProtocol(wrapper)
            self.assertIn(wrapper, factory.protocols)
            factory.unregisterProtocol(wrapper)
            self.assertNotIn(wrapper, factory.protocols)


class TLSPins(PinTestCase):
    def test_certificateOptionsCreatesServerConnections(self):
        with self.reliedOn("CertificateOptions.serverConnectionForTLS (Twisted 26.4 and later)",
                           "smtpproxy.tls.ReloadableContext.serverConnectionForTLS"):
            self.assertTrue(IOpenSSLServerConnectionCreator.implementedBy(CertificateOptions))
            self.assertTrue(callable(CertificateOptions.serverConnectionForTLS))
