"""
The server's TLS context for STARTTLS, read from PEM files.

The files are read with C{cryptography} and handed to Twisted as
C{cryptography} objects: pyOpenSSL's own PKey/X509 types are deprecated
(TWISTED-NOTES section 3).  TLS 1.2 is the minimum (RFC 8314 section 4.1).
"""

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.ssl import CertificateOptions, TLSVersion


class TLSFilesError(Exception):
    """The certificate or key file cannot be used; the message says why."""


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
    if chain[0].public_key().public_numbers() != key.public_key().public_numbers():
        raise TLSFilesError(f"key {key_path} does not match certificate {cert_path}")
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def _reason(error):
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)
