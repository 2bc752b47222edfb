# -*- test-case-name: tests.test_support -*-
"""
Throw-away TLS material: a private CA and a server certificate it signed.

The demo needs a certificate a mail client can be told to trust, and the
tests need real TLS that clients verify.  Generating both on the fly keeps
the repository free of key files that expire, and a second call gives a
second, unrelated CA for "untrusted certificate" cases.  Not for
production: an operator brings a certificate from a real CA.
"""

import datetime
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@attrs.frozen
class Certificates:
    """The CA and server certificate, as objects and as the PEM files written for them."""

    ca: x509.Certificate
    certificate: x509.Certificate
    key: object
    ca_path: str
    cert_path: str
    key_path: str


KEY_TYPES = {
    "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
"""ECDSA P-256, the default, makes cheaper handshakes than RSA-2048 (README, Performance)."""


def make_certificates(directory, hostname="localhost", key_type="ecdsa"):
    """
    Create a CA and a server certificate for ``hostname`` (SAN: that name and IP 127.0.0.1),
    both with keys of ``key_type`` (a name in L{KEY_TYPES}).

    Writes into ``directory`` (which must exist) ``ca.pem``, ``server.pem`` (the server
    certificate followed by the CA: a chain file like an operator's ``--tls_cert``) and
    ``server.key`` (unencrypted PKCS#8); returns a L{Certificates}.
    """
    new_key = KEY_TYPES[key_type]
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtpproxy test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    names = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
            ca_name,
            key.public_key(),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = [os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key")]
    contents = [
        ca_pem,
        certificate.public_bytes(serialization.Encoding.PEM) + ca_pem,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ]
    for path, content in zip(paths, contents):
        with open(path, "wb") as f:
            f.write(content)
    return Certificates(ca, certificate, key, *paths)


def _builder(subject, issuer, public_key):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


_NO_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
     "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
    False,
)


def _usage(**granted):
    """The key usage extension allowing only the C{granted} uses."""
    return x509.KeyUsage(**{**_NO_USAGE, **granted})
