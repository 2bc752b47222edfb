"""
TLS material read from PEM files: the server's context for STARTTLS, and
the trust roots that verify the servers the proxy connects to.

The files are read with C{cryptography} and handed to Twisted as
C{cryptography} objects: pyOpenSSL's own PKey/X509 types are deprecated
(TWISTED-NOTES section 3).  TLS 1.2 is the minimum (RFC 8314 section 4.1).
"""

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from OpenSSL import SSL
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from smtpproxy.reports import REPORT_INTERVAL

log = Logger()


class TLSFilesError(Exception):
    """A certificate, key or CA file cannot be used; the message says why."""


def load_context(cert_path, key_path):
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
        raiseMinimumTo=TLSVersion.TLSv1_2,
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

    def __init__(self, cert_path, key_path):
        self.cert_path = cert_path
        self.key_path = key_path
        self._current = load_context(cert_path, key_path)

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
            self._current = load_context(self.cert_path, self.key_path)
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
    (C{"TLSv1.3/TLS_AES_128_GCM_SHA256"}), or L{None} where the transport
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
    C{"no shared cipher"}), or L{None} when the connection ended otherwise.
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
