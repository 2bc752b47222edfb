# -*- test-case-name: tests.test_refapi -*-
"""
The reference policy API: the contract of docs/protocol.rst sections 3 and 4 answered
from a TOML policy file (users with scrypt password hashes, their senders,
recipient domains, headers and message rate).  It is both usable as it is
and the example to copy when writing one's own API.

  - L{passwords}: the C{scrypt$n$r$p$salt$hash} lines
    (C{python -m smtpproxy.refapi hash} makes one);
  - L{policyfile}: reading and checking the file;
  - L{decision}: the pure answer to one request;
  - L{web}: the twisted.web resource;
  - L{service}: the twistd plugin's options and service
    (C{twistd -n smtpproxy-refapi --policy=FILE}).
"""

from smtpproxy.refapi.passwords import make_hash
from smtpproxy.refapi.policyfile import PolicyFileError, load
from smtpproxy.refapi.service import Options, makeService
from smtpproxy.refapi.web import PolicyResource, PolicySite

__all__ = [
    "Options",
    "PolicyFileError",
    "PolicyResource",
    "PolicySite",
    "load",
    "makeService",
    "make_hash",
]
