"""
Tests for L{smtpproxy.endpoints}: the listening addresses the proxy and the
reference API accept.
"""

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.endpoints import endpoint_description


class EndpointTests(SynchronousTestCase):
    def test_legacy_forms(self):
        self.assertEqual(endpoint_description("127.0.0.1:2525"),
                         "tcp:2525:interface=127.0.0.1:backlog=511")
        self.assertEqual(endpoint_description(":25"), "tcp:25:backlog=511")
        self.assertEqual(endpoint_description("[::1]:587"),
                         r"tcp6:587:interface=\:\:1:backlog=511")

    def test_endpoint_strings_pass(self):
        for text in ["tcp:587", "haproxy:tcp:587", "systemd:domain=INET:index=0", "unix:/run/s"]:
            self.assertEqual(endpoint_description(text), text)


class RefapiImportTests(SynchronousTestCase):
    def test_refapi_stands_on_its_own_imports(self):
        """
        The reference API is a program of its own: loading it does not load
        the proxy's twistd plugin code (L{smtpproxy.tap}).
        """
        loaded = subprocess.run(
            [sys.executable, "-c",
             "import sys, smtpproxy.refapi; print(sorted(m for m in sys.modules if m.startswith('smtpproxy.')))"],
            capture_output=True, text=True, check=True,
        ).stdout
        self.assertIn("smtpproxy.refapi.service", loaded)
        self.assertNotIn("smtpproxy.tap", loaded)
