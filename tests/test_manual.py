"""
Tests for L{smtpproxy.manual}: C{--man}, and README.rst's option reference.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from smtpproxy import manual
from smtpproxy.options import Options
from tests.support.options import OptionsTestCase


def option_names(options):
    """
    Every option C{options} accepts, as given on the command line: the long
    names C{usage.Options} parses with, in the underscore spelling, and the
    one-letter ones.
    """
    names = ["--" + spelling.rstrip("=").replace("-", "_") for spelling in options.longOpt]
    return names + ["-" + letter for letter in options.shortOpt.replace(":", "")]


def headings(text):
    """The option names the OPTIONS section of a manual describes, in order."""
    section = text.split("\nOPTIONS\n", 1)[1].split("\n\nVERSION\n", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("    -") and not line.startswith("     "):
            names += [label.split("=")[0] for label in line.strip().split(", ")]
    return names


class _Extended(Options):
    """The proxy's options with one more of each kind, as a later change would add them."""

    optFlags = [["pool_warm", None, "Open the pool's connections at start."]]
    optParameters = [["pool_size", None, 8, "Upstream connections kept open.", int]]

    def opt_pool_host(self, host):
        """An upstream to keep connections to
        (repeatable)."""


class ManualTests(OptionsTestCase):
    def man(self):
        with self.assertRaises(SystemExit) as raised:
            self.parse(["--man"])
        self.assertEqual(raised.exception.code, 0)
        return self.stdout.getvalue()

    def test_man_lists_every_option(self):
        manual = self.man()
        for name in ["listen", "user", "tohost", "toport", "tls_cert", "tls_key", "api",
                     "logpath", "loglevel", "smtplog", "credentials", "max_recipients",
                     "upstream_tls", "upstream_ca", "upstream_user", "upstream_password_file",
                     "max_connections", "max_connections_per_ip", "data_timeout", "drain_timeout",
                     "auth_api", "max_auth_failures", "auth_failure_window", "limit_exempt"]:
            self.assertIn("--" + name, manual)

    def test_every_option_of_options_is_in_man(self):
        """Each option C{Options} parses has its own entry in C{--man}, once."""
        self.assertEqual(sorted(headings(self.man())), sorted(option_names(Options())))

    def test_readme_lists_every_option(self):
        """README.rst's option reference stays complete."""
        with open(os.path.join(os.path.dirname(__file__), "..", "README.rst")) as f:
            readme = f.read()
        names = [n for n in option_names(Options()) if n.startswith("--")]
        self.assertEqual([n for n in names if f"``{n}" not in readme], [])


class GeneratedTests(SynchronousTestCase):
    """The option part of the manual follows C{Options}, whatever it holds."""

    def setUp(self):
        self.text = manual.text(_Extended())

    def entry(self, heading):
        """The help line under C{heading}."""
        lines = self.text.splitlines()
        return lines[lines.index("    " + heading) + 1].strip()

    def test_new_options_appear(self):
        self.assertEqual(sorted(headings(self.text)), sorted(option_names(_Extended())))
        self.assertIn("--pool_size", headings(self.text))

    def test_parameter_with_default(self):
        self.assertEqual(self.entry("--pool_size=VALUE"), "Upstream connections kept open. [default: 8]")
        self.assertEqual(self.entry("--api_timeout=VALUE"), "Seconds for one whole API exchange. [default: 30.0]")

    def test_parameter_without_default(self):
        self.assertEqual(self.entry("--tohost=VALUE"), "Upstream SMTP server host (mandatory).")

    def test_flag(self):
        self.assertEqual(self.entry("--pool_warm"), "Open the pool's connections at start.")

    def test_method_option_named_by_its_argument(self):
        self.assertEqual(self.entry("--pool_host=HOST"), "An upstream to keep connections to (repeatable).")
        self.assertEqual(
            self.entry("--listen_tls=ADDR"),
            "Address for implicit-TLS submission, port 465 style (RFC 8314; repeatable).")

    def test_short_synonym(self):
        self.assertEqual(self.entry("--help, -h"), "Display this help and exit.")

    def test_values_before_switches(self):
        names = headings(self.text)
        self.assertLess(names.index("--listen"), names.index("--credentials"))
        self.assertLess(names.index("--metrics"), names.index("--pool_warm"))
