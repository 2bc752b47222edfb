"""
The test support package works for real: certificates, the fake policy API, the recording
upstream and the scripted client, over loopback sockets with real TLS.
"""

import io
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.mail import smtp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)

from tests.support.api import start_api
from tests.support.certs import client_options, make_certificates, server_options, trust_root
from tests.support.client import UnexpectedReply, connect, data_block, send_mail
from tests.support.loopback import listen_loopback
from tests.support.upstream import END_OF_DATA, GREETING, start_upstream


def certificates(case):
    """A fresh CA and server certificate in a temporary directory of C{case}."""
    directory = case.mktemp()
    os.mkdir(directory)
    return make_certificates(directory)


def tls_server(case, certs, protocol):
    """Serve C{protocol} over TLS with C{certs} until C{case} ends; the L{LoopbackServer}."""
    factory = TLSMemoryBIOFactory(server_options(certs), False, Factory.forProtocol(protocol))
    server = listen_loopback(reactor, factory)
    case.addCleanup(server.close)
    return server


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Ping(Protocol):
    """Sends b"ping", hangs up on the echo; C{done} fires once disconnected."""

    def __init__(self):
        self.done = Deferred()
        self.echoed = b""
        self.reason = None

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.echoed += data
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class _Greeter(Protocol):
    def connectionMade(self):
        self.transport.write(b"220 tls.example ESMTP\r\n")


class CertificateTests(TestCase):
    def test_files(self):
        """The chain file holds the server certificate, then the CA; the key belongs to it."""
        certs = certificates(self)
        with open(certs.cert_path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(certs.key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(certs.ca_path, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(chain, [certs.certificate, certs.ca])
        self.assertEqual(ca, certs.ca)
        self.assertEqual(key.public_key(), certs.certificate.public_key())
        names = certs.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual([str(a) for a in names.value.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])

    @inlineCallbacks
    def handshake(self, certs, client_certs, hostname="localhost"):
        """Echo b"ping" over TLS; the client protocol, once disconnected."""
        server = tls_server(self, certs, _Echo)
        endpoint = wrapClientTLS(
            client_options(client_certs, hostname), TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        )
        client = yield connectProtocol(endpoint, _Ping())
        yield client.done
        return client

    @inlineCallbacks
    def test_handshake(self):
        certs = certificates(self)
        client = yield self.handshake(certs, certs)
        self.assertEqual(client.echoed, b"ping")
        self.assertTrue(client.reason.check(ConnectionDone))

    @inlineCallbacks
    def test_other_ca_refused(self):
        client = yield self.handshake(certificates(self), certificates(self))
        self.assertTrue(client.reason.check(SSL.Error))
        self.assertIn("certificate verify failed", str(client.reason.value))

    @inlineCallbacks
    def test_wrong_name_refused(self):
        certs = certificates(self)
        client = yield self.handshake(certs, certs, hostname="mail.example")
        self.assertTrue(client.reason.check(VerificationError))


class FakeApiTests(TestCase):
    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    def start(self, answer, tls=None):
        api = start_api(reactor, answer, tls)
        self.addCleanup(api.close)  # runs before the pool closes: the server drops a keep-alive
        return api

    @inlineCallbacks
    def test_records_and_answers_json(self):
        api = self.start(lambda request: {"allow": True, "seen": request["to"]})
        response = yield self.http.post(api.url, json={"username": "ann", "to": ["x@example.net"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual((yield response.json()), {"allow": True, "seen": ["x@example.net"]})
        (request,) = api.requests
        self.assertEqual((request.method, request.path), ("POST", "/policy"))
        self.assertTrue(request.headers["content-type"].startswith("application/json"))
        self.assertEqual(request.json, {"username": "ann", "to": ["x@example.net"]})

    @inlineCallbacks
    def test_status_and_bytes(self):
        api = self.start(lambda request: (503, b"busy"))
        response = yield self.http.post(api.url, data=b"not json")
        self.assertEqual((response.code, (yield response.content())), (503, b"busy"))
        self.assertEqual((api.requests[0].body, api.requests[0].json), (b"not json", None))

    @inlineCallbacks
    def test_delayed_answer(self):
        arrived, answer = Deferred(), Deferred()

        def respond(request):
            arrived.callback(request)
            return answer

        api = self.start(respond)
        posted = self.http.post(api.url, json={"n": 1})
        self.assertEqual((yield arrived), {"n": 1})
        self.assertNoResult(posted)
        answer.callback({"allow": False, "reason": "late"})
        self.assertEqual((yield (yield posted).json()), {"allow": False, "reason": "late"})

    @inlineCallbacks
    def test_close_cancels_held_answer(self):
        """close() with an answer still held: the answer is cancelled, the client disconnected."""
        arrived = Deferred()
        held = Deferred()
        api = self.start(lambda request: arrived.callback(None) or held)
        posted = self.http.post(api.url, json={})
        yield arrived
        yield api.close()
        self.assertTrue(held.called)
        yield self.assertFailure(posted, ResponseFailed)

    @inlineCallbacks
    def test_client_gone_cancels_answer(self):
        """A client that hangs up (the proxy's timeout) cancels the answer it was waiting for."""
        arrived, cancelled = Deferred(), Deferred()
        api = self.start(lambda request: arrived.callback(None) or Deferred(cancelled.callback))
        posted = self.http.post(api.url, json={})
        yield arrived
        posted.cancel()
        yield cancelled
        self.failureResultOf(posted, ResponseNeverReceived)

    @inlineCallbacks
    def test_broken_answer_is_logged(self):
        """A crashing answer function fails the test that uses it, besides a 500 to the client."""
        api = self.start(lambda request: 1 / 0)
        response = yield self.http.post(api.url, json={})
        self.assertEqual(response.code, 500)
        yield response.content()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_https(self):
        """Over TLS, verified the way the proxy verifies an --api_ca (the URL names 127.0.0.1)."""
        certs = certificates(self)
        api = self.start(lambda request: {"allow": True}, tls=server_options(certs))
        self.assertTrue(api.url.startswith("https://127.0.0.1:"))
        policy = BrowserLikePolicyForHTTPS(trust_root(certs))
        https = HTTPClient(Agent(reactor, pool=self.pool, contextFactory=policy))
        response = yield https.post(api.url, json={"tls": True})
        self.assertEqual((yield response.json()), {"allow": True})
        self.assertEqual(api.requests[0].json, {"tls": True})


class _Sender(smtp.ESMTPSenderFactory):
    """Twisted's own sender, with a Deferred for the moment its connection has closed."""

    noisy = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.disconnected = Deferred()

    def clientConnectionLost(self, connector, reason):
        super().clientConnectionLost(connector, reason)
        self.disconnected.callback(None)


class FakeUpstreamTests(TestCase):
    def start(self, **script):
        upstream = start_upstream(reactor, **script)
        self.addCleanup(upstream.close)
        return upstream

    @inlineCallbacks
    def deliver(self, upstream, recipients, content, username=None, password=None):
        """Send C{content} (LF lines) with ESMTPSenderFactory; its result, or its failure."""
        result = Deferred()
        sender = _Sender(
            username, password, "from@example.com", recipients, io.BytesIO(content), result,
            retries=0, requireAuthentication=False, requireTransportSecurity=False,
        )
        sender.domain = b"sender.example"
        reactor.connectTCP("127.0.0.1", upstream.port, sender)
        try:
            return (yield result)
        finally:
            yield sender.disconnected

    @inlineCallbacks
    def test_exact_bytes(self):
        """Headers, 8-bit text, an empty line, a leading dot and a 100 kB line arrive unchanged."""
        upstream = self.start()
        content = (
            b"From: a@example.com\nSubject: h\xc3\xa9llo\n\nbody\n.leading dot\n\n"
            + b"x" * 100_000
            + b"\nlast\n"
        )
        yield self.deliver(upstream, ["to@example.net", "cc@example.net"], content)
        (message,) = upstream.messages
        self.assertEqual(message.data, content.replace(b"\n", b"\r\n"))
        self.assertEqual(message.sender, "from@example.com")
        self.assertEqual(message.recipients, ("to@example.net", "cc@example.net"))
        self.assertEqual((message.queue_id, message.helo, message.login, message.tls),
                         ("Q00001", "sender.example", None, False))
        self.assertEqual(upstream.connections, 1)

    @inlineCallbacks
    def test_body_without_headers(self):
        """Twisted's empty line before a colon-less first line is not added."""
        upstream = self.start()
        yield self.deliver(upstream, ["to@example.net"], b"just a body\n")
        self.assertEqual(upstream.messages[0].data, b"just a body\r\n")

    @inlineCallbacks
    def test_rcpt_refusal(self):
        upstream = self.start(rcpt_refusals={"full@example.net": (452, "4.2.2 Mailbox full")})
        accepted, results = yield self.deliver(
            upstream, ["ok@example.net", "full@example.net"], b"Subject: x\n\nhi\n"
        )
        self.assertEqual(accepted, 1)
        self.assertEqual(results[1], (b"full@example.net", 452, b"4.2.2 Mailbox full"))
        self.assertEqual(upstream.messages[0].recipients, ("ok@example.net",))

    @inlineCallbacks
    def test_data_reply_refuses(self):
        upstream = self.start(data_reply=(452, "4.3.1 Insufficient storage"))
        failure = yield self.assertFailure(
            self.deliver(upstream, ["to@example.net"], b"Subject: x\n\nhi\n"), smtp.SMTPDeliveryError
        )
        self.assertEqual((failure.code, failure.resp), (452, b"4.3.1 Insufficient storage"))
        self.assertEqual(upstream.messages, [])

    @inlineCallbacks
    def session(self, upstream):
        """A scripted client past EHLO, MAIL and RCPT, with the DATA 354 in."""
        client = yield connect(reactor, upstream.port)
        self.addCleanup(client.close)
        yield client.command(b"EHLO client.example", expect=250)
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        yield client.command(b"RCPT TO:<b@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        return client

    @inlineCallbacks
    def test_queue_id_and_custom_success(self):
        upstream = self.start()
        client = yield self.session(upstream)
        client.send(data_block(b"Subject: 1\r\n\r\nx\r\n"))
        self.assertEqual(str((yield client.replies(1))[0]), "250 2.0.0 Ok: queued as Q00001")
        upstream.data_reply = (250, "Ok")
        yield client.command(b"MAIL FROM:<a@example.com>", expect=250)
        yield client.command(b"RCPT TO:<b@example.net>", expect=250)
        yield client.command(b"DATA", expect=354)
        client.send(data_block(b"Subject: 2\r\n\r\nx\r\n"))
        self.assertEqual(str((yield client.replies(1))[0]), "250 Ok")
        self.assertEqual([m.queue_id for m in upstream.messages], ["Q00001", "Q00002"])

    @inlineCallbacks
    def test_drop_after_data(self):
        upstream = self.start(drop_after_data=True)
        client = yield self.session(upstream)
        client.send(data_block(b"Subject: x\r\n\r\nx\r\n"))
        yield self.assertFailure(client.replies(1), ConnectionDone)
        self.assertEqual(len(upstream.messages), 1)

    @inlineCallbacks
    def test_stall_at_end_of_data(self):
        """The message waits, unanswered and unrecorded, until released."""
        upstream = self.start()
        client = yield self.session(upstream)
        reached = upstream.stall(END_OF_DATA)
        client.send(data_block(b"Subject: x\r\n\r\nx\r\n") + b"QUIT\r\n")
        replies = client.replies(2)
        yield reached
        self.assertNoResult(replies)
        self.assertEqual(upstream.messages, [])
        upstream.release()
        self.assertEqual([r.code for r in (yield replies)], [250, 221])
        self.assertEqual(len(upstream.messages), 1)

    @inlineCallbacks
    def test_stall_greeting(self):
        upstream = self.start()
        reached = upstream.stall(GREETING)
        client = yield connect(reactor, upstream.port, wait_for_greeting=False)
        self.addCleanup(client.close)
        client.send(b"EHLO early.example\r\n")
        replies = client.replies(2)
        yield reached
        self.assertNoResult(replies)
        upstream.release()
        self.assertEqual([r.code for r in (yield replies)], [220, 250])
        self.assertEqual(client.greeting.text, "upstream.test ESMTP fake upstream")

    @inlineCallbacks
    def test_close_drops_stalled_connection(self):
        upstream = self.start()
        reached = upstream.stall("EHLO")
        client = yield connect(reactor, upstream.port)
        ehlo = client.command(b"EHLO client.example")
        yield reached
        yield upstream.close()
        yield client.wait_closed()
        self.failureResultOf(ehlo)

    @inlineCallbacks
    def test_wait_idle(self):
        upstream = self.start()
        client = yield connect(reactor, upstream.port)
        idle = upstream.wait_idle()
        self.assertNoResult(idle)
        yield client.command(b"QUIT", expect=221)
        yield idle
        yield client.wait_closed()

    @inlineCallbacks
    def test_login(self):
        """Twisted's sender picks AUTH LOGIN, as the proxy's upstream client would."""
        upstream = self.start(logins={"relay": "secret"})
        yield self.deliver(upstream, ["to@example.net"], b"Subject: x\n\nhi\n", b"relay", b"secret")
        self.assertEqual(upstream.messages[0].login, "relay")

    @inlineCallbacks
    def test_login_required(self):
        upstream = self.start(logins={"relay": "secret"})
        client = yield connect(reactor, upstream.port)
        self.addCleanup(client.close)
        refused = yield client.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual(str(refused), "530 5.7.0 Authentication required")


class ScriptedClientTests(TestCase):
    @inlineCallbacks
    def connect(self, **upstream_options):
        """A scripted client connected to a fake upstream with C{upstream_options}."""
        upstream = start_upstream(reactor, **upstream_options)
        self.addCleanup(upstream.close)
        client = yield connect(reactor, upstream.port)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_multiline_reply(self):
        certs = certificates(self)
        client = yield self.connect(tls=server_options(certs))
        greeting = client.greeting
        self.assertEqual((greeting.code, greeting.lines), (220, ["upstream.test ESMTP fake upstream"]))
        reply = yield client.command(b"EHLO client.example")
        hello = "upstream.test Hello 127.0.0.1, nice to meet you"
        self.assertEqual((reply.code, reply.lines, reply.text), (250, [hello, "STARTTLS"], "STARTTLS"))
        self.assertEqual(str(reply), f"250-{hello}\r\n250 STARTTLS")

    @inlineCallbacks
    def test_pipelining(self):
        """Four commands in one write, four replies in order."""
        client = yield self.connect()
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRSET\r\nNOOP\r\n")
        replies = yield client.replies(4)
        self.assertEqual([r.code for r in replies], [250, 250, 250, 500])
        self.assertTrue(client.received.startswith(b"220 upstream.test"))
        self.assertEqual(client.unsolicited, [])

    @inlineCallbacks
    def test_expect(self):
        client = yield self.connect()
        error = yield self.assertFailure(client.command(b"RCPT TO:<b@example.net>", expect=250), UnexpectedReply)
        self.assertEqual((error.step, error.reply.code), ("RCPT TO:<b@example.net>", 503))
        self.assertIn("503 Must have sender before recipient", str(error))

    @inlineCallbacks
    def test_closed(self):
        client = yield self.connect()
        yield client.command(b"QUIT", expect=221)
        yield client.wait_closed()
        yield self.assertFailure(client.command(b"NOOP"), ConnectionDone)

    @inlineCallbacks
    def test_starttls(self):
        certs = certificates(self)
        client = yield self.connect(tls=server_options(certs))
        yield client.starttls(client_options(certs))
        self.assertEqual(client.transport.getPeerCertificate().to_cryptography(), certs.certificate)
        reply = yield client.command(b"EHLO client.example", expect=250)
        self.assertNotIn("STARTTLS", reply.lines)
        self.assertEqual(client.unsolicited, [])

    @inlineCallbacks
    def test_starttls_injection_seen(self):
        """
        Twisted's own ESMTP runs commands pipelined after STARTTLS and answers them inside TLS
        (docs/twisted.rst fight C): the client reports those replies as unsolicited.
        """
        certs = certificates(self)
        client = yield self.connect(tls=server_options(certs))
        yield client.starttls(client_options(certs), pipelined=b"RSET\r\nQUIT\r\n")
        yield client.wait_closed()
        self.assertEqual([r.code for r in client.unsolicited], [250, 221])

    @inlineCallbacks
    def test_starttls_untrusted(self):
        certs = certificates(self)
        client = yield self.connect(tls=server_options(certs))
        error = yield self.assertFailure(client.starttls(client_options(certificates(self))), SSL.Error)
        self.assertIn("certificate verify failed", str(error))

    @inlineCallbacks
    def test_implicit_tls(self):
        """Port 465 style: TLS from the first byte, the greeting inside it."""
        certs = certificates(self)
        server = tls_server(self, certs, _Greeter)
        client = yield connect(reactor, server.port, tls=client_options(certs))
        self.addCleanup(client.close)
        self.assertEqual(str(client.greeting), "220 tls.example ESMTP")
        self.assertEqual(client.transport.getPeerCertificate().to_cryptography(), certs.certificate)

    def test_data_block(self):
        self.assertEqual(data_block(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n")
        self.assertEqual(data_block(b"x\r\n"), b"x\r\n.\r\n")
        self.assertEqual(data_block(b""), b".\r\n")

    @inlineCallbacks
    def test_send_mail(self):
        """The whole submission dialogue, against an upstream with STARTTLS and AUTH."""
        certs = certificates(self)
        upstream = start_upstream(reactor, tls=server_options(certs), logins={"ann": "s3cret"})
        self.addCleanup(upstream.close)
        message = b"Subject: hi\r\n\r\n.dot\r\nend\r\n"
        reply = yield send_mail(
            reactor, upstream.port, client_options(certs), "ann", "s3cret",
            "a@example.com", ["b@example.net", "c@example.net"], message,
        )
        self.assertEqual(str(reply), "250 2.0.0 Ok: queued as Q00001")
        (received,) = upstream.messages
        self.assertEqual(received.data, message)
        self.assertEqual(received.recipients, ("b@example.net", "c@example.net"))
        self.assertEqual((received.login, received.tls, received.helo), ("ann", True, "client.example"))
        yield upstream.wait_idle()  # send_mail hung up

    @inlineCallbacks
    def test_send_mail_names_failed_step(self):
        upstream = start_upstream(reactor)
        self.addCleanup(upstream.close)
        error = yield self.assertFailure(
            send_mail(reactor, upstream.port, None, "ann", "pw", "a@example.com", ["b@example.net"], b"x\r\n"),
            UnexpectedReply,
        )
        self.assertEqual((error.step, error.reply.code), ("STARTTLS", 454))
        yield upstream.wait_idle()  # even a failed send_mail hangs up
