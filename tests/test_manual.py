"""
Tests for L{smtpproxy.manual}: C{--man}, and README.rst's option reference.
"""

import os

from smtpproxy.options import Options
from tests.support.options import OptionsTestCase


class ManualTests(OptionsTestCase):
    def test_man_lists_every_option(self):
        with self.assertRaises(SystemExit):
            self.parse(["--man"])
        manual = self.stdout.getvalue()
        for name in ["listen", "user", "tohost", "toport", "tls_cert", "tls_key", "api",
                     "logpath", "loglevel", "smtplog", "credentials", "max_recipients",
                     "upstream_tls", "upstream_ca", "upstream_user", "upstream_password_file",
                     "max_connections", "max_connections_per_ip", "data_timeout", "drain_timeout",
                     "auth_api", "max_auth_failures", "auth_failure_window", "limit_exempt"]:
            self.assertIn("--" + name, manual)

    def test_readme_lists_every_option(self):
        """README.rst's option reference stays complete."""
        with open(os.path.join(os.path.dirname(__file__), "..", "README.rst")) as f:
            readme = f.read()
        options = Options()
        names = [p[0] for p in options.optParameters] + [f[0] for f in options.optFlags]
        names += ["listen", "listen_tls", "man", "version"]
        self.assertEqual([n for n in names if f"``--{n}" not in readme], [])
