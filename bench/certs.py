"""
The TLS material both proxies serve: one CA and one server certificate.

Both proxies get the same certificate, so the handshake costs the same
server-side work for each.  ``ecdsa`` (P-256) is the default; ``rsa``
(RSA-2048) measures what the key type costs per handshake (issue 5 asks
which is faster: the signature in every full handshake is the server's
biggest fixed cost per session).
"""

import os

from smtpproxy.certificates import make_certificates


def make(directory, kind="ecdsa"):
    """Write ca.pem, server.pem (chain) and server.key; return the L{Certificates}."""
    os.makedirs(directory, exist_ok=True)
    return make_certificates(directory, "localhost", kind)
