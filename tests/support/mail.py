"""
What the tests log in with and send, in one place, so that a test module
names what it needs here instead of importing another test module: the
stack's login, the AUTH lines and replies for it, a plain message, and the
header the stack's default policy answer adds to it.
"""

import base64

USER, PASSWORD = "alice", "s3cret"


def plain(username=USER, password=PASSWORD):
    """An C{AUTH PLAIN} command line with an initial response."""
    return b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode())


PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
AUTH_PLAIN = plain()

AUTH_OK = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello Bob.\r\n"

POLICY_HEADER = b"X-Policy: checked\r\n"


def checked(message):
    """C{message} as the upstream receives it: with L{POLICY_HEADER} at the end of its header."""
    return message.replace(b"\r\n\r\n", b"\r\n" + POLICY_HEADER + b"\r\n", 1)
