"""
smtpproxy: an SMTP submission proxy that asks a policy API before relaying.

The embedding API (see README.rst): build a L{ProxyConfig}, pass it to
L{build_factory} and listen on any Twisted endpoint with the result.
"""

from smtpproxy._version import __version__
from smtpproxy.config import Limits, Policy, ProxyConfig, Upstream
from smtpproxy.server import ProxyFactory, build_factory

__all__ = [
    "Limits",
    "Policy",
    "ProxyConfig",
    "ProxyFactory",
    "Upstream",
    "__version__",
    "build_factory",
]
