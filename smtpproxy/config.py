# -*- test-case-name: tests.test_options -*-
"""
The proxy's configuration as immutable value objects.

The twistd plugin builds these from command-line options (L{smtpproxy.options});
an application that embeds the proxy builds them directly.  Defaults are
the ones docs/protocol.rst section 7 names.
"""

import ipaddress
import socket

from attrs import field, frozen
from attrs.validators import in_
from twisted.internet.ssl import optionsForClientTLS

from smtpproxy.tls import TLSPolicy


BARE_LF = ("normalize", "reject")


def networks(value) -> tuple:
    """
    C{--limit_exempt}'s networks: a comma-separated string, or an iterable
    of strings or networks, as a tuple of C{ipaddress} networks.  A bad
    entry (host bits set included: C{10.1.2.3/8} is more likely a typo than
    C{10.0.0.0/8}) is a C{ValueError} naming it.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    return tuple(ipaddress.ip_network(entry) for entry in value)


@frozen
class Limits:
    """
    Every bound the proxy enforces on a client; each is an option.

    @ivar bare_lf: what a line ended by a bare LF is (see
        L{smtpproxy.framing}): C{"normalize"}, a line end as CRLF is (as
        Postfix 3.9 and later do by default); C{"reject"}, an error.
    @ivar limit_exempt: the networks (L{networks}) whose clients no
        per-address limit applies to: C{max_connections_per_ip} and the
        lock-out after C{max_auth_failures}.  C{max_connections} still
        counts them.
    """

    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_auth_failures: int = 5
    auth_failure_window: float = 300
    limit_exempt: tuple = field(default=("127.0.0.0/8", "::1/128"), converter=networks)
    max_recipients: int = 100
    max_message_size: int = 52428800
    max_header_size: int = 131072
    header_memory: int = 32 * 1024 * 1024
    max_line_length: int = 2048
    idle_timeout: float = 300
    pretls_timeout: float = 30
    data_timeout: float = 600
    spool_memory: int = 256 * 1024
    bare_lf: str = field(default="normalize", validator=in_(BARE_LF))

    def exempt(self, address: str) -> bool:
        """
        Whether the client at C{address} (an IP address as the session
        shows it, or a UNIX socket's name, which is never exempt) is in
        C{limit_exempt}.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.limit_exempt)


UPSTREAM_TLS = ("none", "starttls", "tls")


@frozen
class Upstream:
    """
    Where allowed mail goes, how it is protected, and how long each step may take.

    @ivar tls: C{"none"}: plain, never upgraded; C{"starttls"}: STARTTLS is
        required; C{"tls"}: implicit TLS (port 465 style).  Both TLS modes
        verify the certificate for C{host} (a name, or an IP address in its
        SANs): if that fails the message waits rather than going in clear.
    @ivar trust_root: the C{IOpenSSLTrustRoot} that certificate must chain
        to (L{smtpproxy.tls.load_trust_root}); C{None} is the system store.
    @ivar username: log in to the upstream (AUTH) as this user, with
        C{password}; only over TLS, so the password never goes in clear.
    @ivar tls_policy: the L{TLSPolicy} toward the upstream.
    @ivar xclient: tell an upstream that offers XCLIENT (Postfix with
        C{smtpd_authorized_xclient_hosts}) who the real client is, so its
        logs and per-client controls see that client, not the proxy.
    @ivar pool_idle: connections kept idle for the next message
        (L{smtpproxy.pool}); 0 closes each after its message.  64: with
        many clients at once, fewer kept connections mean more closed
        only to be opened again (README.rst gives the figures).
    @ivar pool_timeout: seconds a kept connection may stay idle before
        QUIT: well below the 300 s an SMTP server waits for a command
        (RFC 5321 section 4.5.3.2.7), so the upstream rarely closes one
        just as it is used.
    @ivar pool_messages: messages one connection carries before QUIT, so
        that an upstream's per-connection limits and logs stay sane.
    @ivar client_tls: derived: the client TLS context for every delivery,
        built once so the trust store is not loaded again for each message.
    """

    host: str
    port: int
    timeout: float = 60
    connect_timeout: float = 30
    tls: str = field(default="none", validator=in_(UPSTREAM_TLS))
    trust_root: object = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_policy: TLSPolicy = field(factory=TLSPolicy, repr=False)
    xclient: bool = False
    pool_idle: int = 64
    pool_timeout: float = 30
    pool_messages: int = 100
    client_tls: object = field(init=False, repr=False, eq=False)

    @client_tls.default
    def _client_tls(self):
        if self.tls == "none":
            return None
        return optionsForClientTLS(
            self.host, trustRoot=self.trust_root, extraCertificateOptions=self.tls_policy.options())

    def __attrs_post_init__(self):
        if (self.username is None) != (self.password is None):
            raise ValueError("an upstream user needs a password, and a password a user")
        if self.username is not None and self.tls == "none":
            raise ValueError(
                "upstream credentials need upstream TLS (starttls or tls): "
                "they are never sent in clear"
            )


@frozen
class Policy:
    """
    The policy API: its URL, the deadline for one exchange, its CA bundle.

    @ivar idle_timeout: seconds an idle connection to the API is kept for
        the next request; below the keep-alive timeout of common servers
        (Node and uvicorn: 5 s), so the proxy rarely picks a connection the
        API is closing.
    @ivar connections: requests to the API at once; more wait in a queue.
    @ivar queue: requests that may wait for one of those; past it a
        message gets C{451 4.3.0} at once.  A request waits at most
        C{timeout} in all, queue included.
    @ivar auth_url: where to check each login at AUTH (C{--auth_api}), with
        the same deadline and CA; C{None}: every well-formed login is taken
        and the API at C{url} judges the password with each message.
    """

    url: str
    timeout: float = 30
    ca_path: str | None = None
    idle_timeout: float = 2
    connections: int = 64
    queue: int = 1000
    auth_url: str | None = None


@frozen
class ProxyConfig:
    """
    Everything one proxy instance needs.

    @ivar tls: the server's TLS context factory for STARTTLS (for example a
        C{twisted.internet.ssl.CertificateOptions}).
    @ivar hostname: the name in the greeting and in EHLO toward the upstream.
    @ivar transcript: log every command and reply to the C{smtpproxy.smtp}
        log namespace (what C{--smtplog} writes to its file).
    @ivar log_credentials: show AUTH data in that transcript
        (C{--credentials}).
    @ivar verify_recipients: ask the upstream about each recipient at RCPT
        time (L{smtpproxy.verify}).
    @ivar verify_cache_time: seconds a definite verdict is kept; 0 keeps none.
    @ivar probe_upstream: ask the upstream what it offers (EHLO) as soon as
        the proxy listens, so DSN, SMTPUTF8 and its SIZE can be offered
        from the first client on; without it they are learned from the
        first delivery or recipient check.
    """

    policy: Policy
    upstream: Upstream
    tls: object = field(repr=False)
    hostname: str = field(factory=socket.getfqdn)
    limits: Limits = Limits()
    transcript: bool = False
    log_credentials: bool = False
    verify_recipients: bool = False
    verify_cache_time: float = 60
    probe_upstream: bool = True
