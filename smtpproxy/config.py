"""
The proxy's configuration as immutable value objects.

The twistd plugin builds these from command-line options (L{smtpproxy.tap});
an application that embeds the proxy builds them directly.  Defaults are
the ones SPEC section 7 names.
"""

import socket

from attrs import field, frozen


@frozen
class Limits:
    """Every bound the proxy enforces on a client; each is an option."""

    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_recipients: int = 100
    max_message_size: int = 52428800
    max_header_size: int = 1048576
    max_line_length: int = 2048
    idle_timeout: float = 300
    pretls_timeout: float = 30
    spool_memory: int = 256 * 1024


@frozen
class Upstream:
    """Where allowed mail goes, and how long each step may take."""

    host: str
    port: int
    timeout: float = 60
    connect_timeout: float = 30


@frozen
class Policy:
    """The policy API: its URL, the deadline for one exchange, its CA bundle."""

    url: str
    timeout: float = 30
    ca_path: str | None = None


@frozen
class ProxyConfig:
    """
    Everything one proxy instance needs.

    @ivar tls: the server's TLS context factory for STARTTLS (for example a
        L{twisted.internet.ssl.CertificateOptions}).
    @ivar hostname: the name in the greeting and in EHLO toward the upstream.
    @ivar transcript: log every command and reply to the C{smtpproxy.smtp}
        log namespace (what C{--smtplog} writes to its file).
    @ivar log_credentials: show AUTH data in that transcript
        (C{--credentials}).
    """

    policy: Policy
    upstream: Upstream
    tls: object = field(repr=False)
    hostname: str = field(factory=socket.getfqdn)
    limits: Limits = Limits()
    transcript: bool = False
    log_credentials: bool = False
