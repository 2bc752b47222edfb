"""
Parsing a command line as twistd would, for tests of the options and of the
service built from them: real certificate files, stderr and stdout captured.
"""

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.options import Options
from tests.support.certs import make_certificates


class OptionsTestCase(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.mkdir(directory)
        certs = make_certificates(directory)
        self.cert, self.key, self.ca = certs.cert_path, certs.key_path, certs.ca_path
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def arguments(self, **changes):
        """A complete command line, with C{changes}; a value of L{None} leaves that option out."""
        values = {"listen": "127.0.0.1:0", "tohost": "127.0.0.1", "toport": "25",
                  "tls_cert": self.cert, "tls_key": self.key, "api": "http://127.0.0.1:1/"}
        values.update(changes)
        return [f"--{k}={v}" for k, v in values.items() if v is not None]

    def parse(self, arguments):
        options = Options()
        options.parseOptions(arguments)
        return options

    def failure(self, arguments):
        """The one stderr line and the exit code of a refused start."""
        with self.assertRaises(SystemExit) as raised:
            self.parse(arguments)
        return self.stderr.getvalue(), raised.exception.code
