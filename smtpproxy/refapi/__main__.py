# -*- test-case-name: tests.test_refapi -*-
"""
C{python -m smtpproxy.refapi hash}: print a password line for the policy file.

The password is read from the terminal without echo (asked twice), or from
the first line of standard input when that is not a terminal
(C{printf %s "$PW" | python -m smtpproxy.refapi hash}); never from the
command line, which any local user can read in C{ps}.
"""

import argparse
import getpass
import sys

from smtpproxy.refapi.passwords import make_hash


def read_password(stdin) -> str:
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("empty password")
    return password


def main(argv=None, stdin=None, stdout=None):
    parser = argparse.ArgumentParser(
        prog="python -m smtpproxy.refapi", description="Tools for the reference policy API."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash", help="read a password and print its scrypt line")
    parser.parse_args(argv)
    password = read_password(sys.stdin if stdin is None else stdin)
    print(make_hash(password).line(), file=sys.stdout if stdout is None else stdout)


if __name__ == "__main__":
    main()
