# -*- test-case-name: tests.test_reload -*-
"""
TLS material read from PEM files: the server's context for STARTTLS, and
the trust roots that verify the servers the proxy connects to.

The files are read with C{cryptography} and handed to Twisted as
C{cryptography} objects: pyOpenSSL's own PKey/X509 types are deprecated.

Both sides follow a L{TLSPolicy}: by default Mozilla's "intermediate"
profile, TLS 1.2 (RFC 8314 section 4.1) and 1.3 with forward-secret AEAD
suites only, in the server's order of preference (Twisted sets
C{OP_CIPHER_SERVER_PREFERENCE}).
"""

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from OpenSSL import SSL
from attrs import field, frozen
from attrs.validators import in_
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from smtpproxy.reports import REPORT_INTERVAL
from smtpproxy.startup import fail

log = Logger()


class TLSFilesError(Exception):
    """A certificate, key or CA file cannot be used; the message says why."""


INTERMEDIATE = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
"""Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 has only AEAD suites)."""

VERSIONS = {
    "1.0": TLSVersion.TLSv1_0,
    "1.1": TLSVersion.TLSv1_1,
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
}


@frozen
class TLSPolicy:
    """
    The protocol versions and TLS 1.2 cipher suites one side accepts.

    @ivar min_version: the lowest version, C{"1.0"} to C{"1.3"}; below 1.2
        only for old devices (OpenSSL's security level may forbid them even
        then: add C{@SECLEVEL=0} to C{ciphers}).
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2 and below.
    """

    min_version: str = field(default="1.2", validator=in_(VERSIONS))
    ciphers: str = INTERMEDIATE

    def __attrs_post_init__(self):
        """
        A cipher string OpenSSL finds nothing in is refused now, at start,
        rather than at the first handshake.
        """
        try:
            CertificateOptions(**self.options())
        except ValueError:
            raise ValueError(f"no usable cipher in {self.ciphers!r}") from None

    def options(self):
        """The C{CertificateOptions} keyword arguments of this policy."""
        floor = "raiseMinimumTo" if self.min_version >= "1.2" else "insecurelyLowerMinimumTo"
        return {
            floor: VERSIONS[self.min_version],
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(self.ciphers),
        }


_DEFAULT = TLSPolicy()


def policy_from_options(options, prefix=""):
    """
    The L{TLSPolicy} of C{--tls_min_version} and C{--tls_ciphers} (with
    C{prefix} C{"upstream_"}, of the upstream's); a bad one stops the start.
    """
    version, ciphers = options[prefix + "tls_min_version"], options[prefix + "tls_ciphers"]
    if version not in VERSIONS:
        fail(f"--{prefix}tls_min_version must be one of {', '.join(VERSIONS)}")
    try:
        return TLSPolicy(version, INTERMEDIATE if ciphers is None else ciphers)
    except ValueError as e:
        fail(f"--{prefix}tls_ciphers: {e}")


def load_context(cert_path, key_path, policy=_DEFAULT):
    """
    A server context from a certificate (chain) file and a key file.

    @raise TLSFilesError: a file is unreadable, not PEM, or the key does
        not belong to the certificate.
    """
    try:
        with open(cert_path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise TLSFilesError(f"cannot read certificate {cert_path}: {_reason(e)}")
    try:
        with open(key_path, "rb") as f:
            key = load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise TLSFilesError(f"cannot read key {key_path}: {_reason(e)}")
    if _public(chain[0].public_key()) != _public(key.public_key()):
        raise TLSFilesError(f"key {key_path} does not match certificate {cert_path}")
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        **policy.options(),
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableContext:
    """
    The server context from C{--tls_cert}/C{--tls_key}, re-read on demand
    (SIGHUP), so a renewed certificate needs no restart.

    Twisted asks a context for each new TLS connection (at STARTTLS, or at
    accept on an implicit-TLS listener), so every connection made after
    L{reload} gets the new pair; connections already in TLS keep theirs.

    @raise TLSFilesError: from the constructor, when the files are unusable.
    """

    def __init__(self, cert_path, key_path, policy=_DEFAULT):
        self.cert_path = cert_path
        self.key_path = key_path
        self.policy = policy
        self._current = load_context(cert_path, key_path, policy)

    def serverConnectionForTLS(self, protocol):
        return self._current.serverConnectionForTLS(protocol)

    def reload(self):
        """
        Read both files again.  A pair that cannot be used is one error line
        in the log, and the pair in use stays: a botched renewal must not
        take the service down.

        @return: whether the new pair is in use.
        """
        try:
            self._current = load_context(self.cert_path, self.key_path, self.policy)
        except TLSFilesError as e:
            log.error("TLS reload failed, keeping the certificate in use: {reason}", reason=str(e))
            return False
        log.info("TLS certificate and key reloaded from {cert}", cert=self.cert_path)
        return True


def load_trust_root(ca_path):
    """
    A trust root of every certificate in the PEM file C{ca_path} (a bundle
    may hold several), for verifying a server the proxy connects to.

    @raise TLSFilesError: the file is unreadable or holds no certificate.
    """
    try:
        with open(ca_path, "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise TLSFilesError(f"cannot read CA file {ca_path}: {_reason(e)}")
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]
    )


def negotiated(transport):
    """
    The TLS version and cipher of a connection in TLS, as logs show them
    (C{"TLSv1.3/TLS_AES_128_GCM_SHA256"}), or C{None} where the transport
    has no OpenSSL connection to ask.
    """
    handle = getattr(transport, "getHandle", None)
    connection = None if handle is None else handle()
    if not hasattr(connection, "get_protocol_version_name"):
        return None
    return f"{connection.get_protocol_version_name()}/{connection.get_cipher_name()}"


def handshake_error(failure):
    """
    OpenSSL's reason for a failed handshake (C{"unsupported protocol"},
    C{"no shared cipher"}), or C{None} when the connection ended otherwise.
    """
    if not failure.check(SSL.Error):
        return None
    errors = failure.value.args[0] if failure.value.args else None
    if isinstance(errors, list) and errors and isinstance(errors[-1], tuple):
        return errors[-1][-1] or "unknown reason"
    return str(failure.value) or "unknown reason"


def log_handshake_failures(counts, address):
    """
    The log line of a L{smtpproxy.reports.FloodReport} of failed
    handshakes: C{counts} by OpenSSL's reason, C{address} the last client's.
    At info: a failed handshake is the client's problem, but the one an
    operator looks for when a device says it cannot connect.
    """
    if counts.total() == 1:
        (reason,) = counts
        log.info("TLS handshake failed with {address}: {reason}", address=address, reason=reason)
        return
    log.info(
        "TLS handshake failed {count} times ({reasons}); the last with {address}; "
        "next report in {interval} s at the earliest",
        count=counts.total(),
        reasons=", ".join(f"{n} {reason}" for reason, n in counts.most_common()),
        address=address,
        interval=REPORT_INTERVAL,
    )


def _public(key):
    """A public key's bytes, comparable for every key type (Ed25519 has no numbers)."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _reason(error):
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
