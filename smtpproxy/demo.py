# -*- test-case-name: tests.test_demo -*-
"""
The proxy on an embedded default: ``python3 dev.py demo``.

It starts, all on loopback, the reference policy API (L{smtpproxy.refapi})
on a policy file it writes the first time, asked about each login at AUTH
(C{--auth_api}, the recommended setup: a wrong password is a 535 there)
and about each message, a mail sink that stores what
it receives in a Maildir, and the proxy between a mail client and that
sink, with a freshly made certificate.  It prints how to send a test mail
and where it lands; Ctrl-C stops everything.
"""

import argparse
import os
import socket
import sys
import time

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.mail import smtp
from zope.interface import implementer

from smtpproxy import Policy, Proxy, ProxyConfig, Upstream
from smtpproxy.certificates import make_certificates
from smtpproxy.refapi import PolicyResource, PolicySite, load, make_hash
from smtpproxy.tls import load_context

USER, PASSWORD = "demo", "demo"


DRAIN_TIMEOUT = 5
"""Seconds Ctrl-C waits for a message in flight before the demo ends."""

POLICY = """\
# The demo's policy file, read by the reference policy API (smtpproxy.refapi).
# Edit it and restart the demo; delete it to get this one back.
[users.{user}]
password = "{hash}"
senders = ["@example.com", "{user}@example.org"]
recipient_domains = ["*"]
add_headers = {{ X-Demo-Policy = "allowed for {user}" }}
rate = "20/minute"
"""


def write_policy(path):
    """Write the demo policy to C{path} unless a (maybe edited) one is there."""
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(POLICY.format(user=USER, hash=make_hash(PASSWORD).line()))


class MaildirMessage:
    """One delivered copy, written to C{tmp/} and moved to C{new/} when complete."""

    def __init__(self, maildir):
        self._maildir = maildir
        self._lines = []

    def lineReceived(self, line):
        self._lines.append(line)

    def eomReceived(self):
        name = f"{time.time():.6f}.{os.getpid()}_{id(self)}.{socket.gethostname()}"
        temporary = os.path.join(self._maildir, "tmp", name)
        with open(temporary, "wb") as f:
            f.write(b"\n".join(self._lines) + b"\n")
        os.rename(temporary, os.path.join(self._maildir, "new", name))
        return defer.succeed(name)

    def connectionLost(self):
        self._lines = []


@implementer(smtp.IMessageDelivery)
class MaildirDelivery:
    """The sink's delivery: every recipient gets a copy in the one Maildir."""

    def __init__(self, maildir):
        self.maildir = maildir

    def receivedHeader(self, helo, origin, recipients):
        return b"Received: from " + (helo[0] or b"unknown") + b" by smtpproxy-demo sink"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return lambda: MaildirMessage(self.maildir)


class _QuietESMTP(smtp.ESMTP):
    noisy = False


class MaildirSink(smtp.SMTPFactory):
    """An SMTP server that stores every message it accepts in C{maildir}."""

    protocol = _QuietESMTP
    noisy = False

    def __init__(self, maildir):
        super().__init__()
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        self.delivery = MaildirDelivery(maildir)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.delivery = self.delivery
        return protocol


@attrs.frozen
class Demo:
    """The running demo: where to connect, what to trust, where mail lands."""

    port: int
    api: str
    auth_api: str
    policy: str
    ca: str
    maildir: str
    listeners: list
    proxy: object

    @defer.inlineCallbacks
    def stop(self):
        """
        Stop the proxy as twistd does (L{smtpproxy.Proxy}: a message in
        flight is finished, for up to L{DRAIN_TIMEOUT} seconds), then the
        API and the sink it needed.
        """
        yield self.proxy.drain(DRAIN_TIMEOUT)
        yield self.proxy.close()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.listeners])


INSTRUCTIONS = """
smtpproxy demo is running (Ctrl-C stops it).

  submission   127.0.0.1:{port}, STARTTLS required, AUTH PLAIN or LOGIN
  login        {user} / {password}
  certificate  {ca} (the CA that signed the proxy's certificate)
  policy API   {api} (messages), {auth_api} (logins)
  policy file  {policy}
  mail lands   {maildir}/new/

Send a test mail with Python:

  {python} -c "import smtplib, ssl; s = smtplib.SMTP('127.0.0.1', {port}); \\
s.starttls(context=ssl.create_default_context(cafile='{ca}')); s.login('{user}', '{password}'); \\
s.sendmail('{user}@example.com', ['you@example.net'], 'Subject: hello\\r\\n\\r\\nIt works.\\r\\n'); s.quit()"

or with swaks:

  swaks --server 127.0.0.1:{port} --tls --tls-ca-path {ca} --auth PLAIN \\
      --auth-user {user} --auth-password {password} --from {user}@example.com --to you@example.net
"""


@defer.inlineCallbacks
def start(reactor, directory, port):
    """Start the policy API, the sink and the proxy; fire with the L{Demo}."""
    os.makedirs(directory, exist_ok=True)
    certs = make_certificates(directory)
    maildir = os.path.join(directory, "Maildir")
    listen = lambda port, factory: TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    policy = os.path.join(directory, "policy.toml")
    write_policy(policy)
    api_port = yield listen(0, PolicySite(PolicyResource(reactor, load(policy))))
    sink_port = yield listen(0, MaildirSink(maildir))
    api = f"http://127.0.0.1:{api_port.getHost().port}"
    config = ProxyConfig(
        policy=Policy(url=api + "/check", auth_url=api + "/login"),
        upstream=Upstream(host="127.0.0.1", port=sink_port.getHost().port),
        tls=load_context(certs.cert_path, certs.key_path),
        hostname="localhost",
    )
    proxy = Proxy(config, reactor, listen=[f"tcp:{port}:interface=127.0.0.1"])
    (proxy_port,) = yield proxy.listen()
    return Demo(proxy_port.getHost().port, config.policy.url, config.policy.auth_url, policy,
                certs.ca_path, maildir, [api_port, sink_port], proxy)


@defer.inlineCallbacks
def run(reactor, directory, port):
    """The demo until Ctrl-C."""
    demo = yield start(reactor, directory, port)
    reactor.addSystemEventTrigger("before", "shutdown", demo.stop)
    print(INSTRUCTIONS.format(port=demo.port, user=USER, password=PASSWORD, ca=demo.ca,
                              api=demo.api, auth_api=demo.auth_api, policy=demo.policy,
                              maildir=demo.maildir, python=sys.executable),
          flush=True)
    yield defer.Deferred()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, default=2525, help="submission port (2525)")
    parser.add_argument(
        "--directory", default=os.path.abspath("smtpproxy-demo"),
        help="where the certificate, the policy file and the Maildir go (./smtpproxy-demo)")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    task.react(run, [args.directory, args.port])


if __name__ == "__main__":
    main()
