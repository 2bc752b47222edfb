# -*- test-case-name: tests.test_endpoints -*-
"""
Listening addresses as the operator writes them, for the proxy and the
reference API alike: both take the original Perl proxy's C{ip:port} forms
and Twisted endpoint strings, and neither should need the other's plugin
code to do so.
"""

import re

BACKLOG = 511
"""Pending connections the kernel may queue per listener (nginx's default)."""

_IPV4_PORT = re.compile(r"^((?:\d{1,3}\.){3}\d{1,3})?:(\d+)$")
_IPV6_PORT = re.compile(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$")


def endpoint_description(listen):
    """
    A Twisted endpoint string for a C{--listen} value.

    The original's C{ip:port} and C{[v6]:port} forms (and C{:port} for every
    address) are translated, with a listen backlog of L{BACKLOG} instead of
    Twisted's 50, which drops connections in a burst well below
    C{--max_connections}; anything else is taken as an endpoint string
    (C{tcp:587:backlog=1024}, C{haproxy:tcp:587},
    C{systemd:domain=INET:index=0}...).
    """
    if m := _IPV4_PORT.match(listen):
        host, port = m.groups()
        interface = f":interface={host}" if host else ""
        return f"tcp:{port}{interface}:backlog={BACKLOG}"
    if m := _IPV6_PORT.match(listen):
        host, port = m.groups()
        return f"tcp6:{port}:interface=" + host.replace(":", r"\:") + f":backlog={BACKLOG}"
    return listen
