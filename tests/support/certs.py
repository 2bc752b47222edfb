"""
Client-side TLS helpers for tests, around L{smtpproxy.certificates}.
"""

from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

from smtpproxy.certificates import Certificates, make_certificates
from smtpproxy.tls import load_context

__all__ = ["Certificates", "client_options", "make_certificates", "server_options", "trust_root"]


def server_options(certs):
    """A server-side context presenting the certificate and its chain, as the proxy loads it."""
    return load_context(certs.cert_path, certs.key_path)


def trust_root(certs):
    """An C{IOpenSSLTrustRoot} trusting only the test CA (for treq's C{BrowserLikePolicyForHTTPS})."""
    return ssl.Certificate.loadPEM(certs.ca.public_bytes(serialization.Encoding.PEM))


def client_options(certs, hostname="localhost"):
    """Client-side TLS options that verify the server as ``hostname`` against the test CA."""
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root(certs))
