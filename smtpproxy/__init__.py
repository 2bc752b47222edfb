# -*- test-case-name: tests.test_embedding -*-
"""
smtpproxy: an SMTP submission proxy that asks a policy API before relaying.

The embedding API (see README.rst): build a L{ProxyConfig} and give it to
a L{Proxy}, which listens, drains and closes in the order that loses no
message; or pass it to L{build_factory} for a server factory to serve on
any Twisted endpoint oneself.
"""

from smtpproxy._version import __version__
from smtpproxy.config import Limits, Policy, ProxyConfig, Upstream
from smtpproxy.proxy import Proxy
from smtpproxy.server import ProxyFactory, build_factory

__all__ = [
    "Limits",
    "Policy",
    "Proxy",
    "ProxyConfig",
    "ProxyFactory",
    "Upstream",
    "__version__",
    "build_factory",
]
