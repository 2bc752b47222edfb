"""
The TLS material both proxies serve: one CA and one server certificate.

Both proxies get the same certificate, so the handshake costs the same
server-side work for each.  ``ecdsa`` (P-256, the project's own
L{smtpproxy.certificates.make_certificates}) is the default; ``rsa`` makes
an RSA-2048 certificate of the same shape, to measure what the key type
costs per handshake (issue 5 asks which is faster: the signature in every
full handshake is the server's biggest fixed cost per session).
"""

import datetime
import ipaddress
import os
import types

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smtpproxy.certificates import make_certificates


def make(directory, kind="ecdsa"):
    """Write ca.pem, server.pem (chain) and server.key; return their paths."""
    os.makedirs(directory, exist_ok=True)
    if kind == "ecdsa":
        c = make_certificates(directory, "localhost")
        return types.SimpleNamespace(ca_path=c.ca_path, cert_path=c.cert_path,
                                     key_path=c.key_path, kind=kind)
    if kind != "rsa":
        raise ValueError(f"unknown certificate kind {kind!r}")
    return _make_rsa(directory)


def _make_rsa(directory):
    now = datetime.datetime.now(datetime.timezone.utc)

    def builder(subject, issuer, public_key):
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench RSA CA")])
    ca = (
        builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
                ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    files = {
        "ca.pem": ca_pem,
        "server.pem": cert.public_bytes(pem) + ca_pem,
        "server.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    return types.SimpleNamespace(
        ca_path=os.path.join(directory, "ca.pem"),
        cert_path=os.path.join(directory, "server.pem"),
        key_path=os.path.join(directory, "server.key"),
        kind="rsa",
    )
