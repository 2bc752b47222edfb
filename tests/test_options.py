"""
Tests for L{smtpproxy.options}: the command line, its start-up errors and
the L{smtpproxy.config.ProxyConfig} it becomes, without a reactor.
"""

import os

from smtpproxy.options import Options, config_from
from smtpproxy.tls import TLSPolicy
from tests.support.certs import make_certificates
from tests.support.options import OptionsTestCase


class OptionsTests(OptionsTestCase):
    def test_complete(self):
        options = self.parse(self.arguments() + ["--listen=[::1]:0"])
        self.assertEqual(options["listen"], ["127.0.0.1:0", "[::1]:0"])
        config = config_from(options)
        self.assertEqual(config.upstream.port, 25)
        self.assertEqual(config.policy.timeout, 30)
        self.assertFalse(config.transcript)

    def test_login_check_and_lockout_options(self):
        options = self.parse(self.arguments(
            auth_api="http://127.0.0.1:1/login", max_auth_failures=3, auth_failure_window=60,
            limit_exempt="10.0.0.0/8, 2001:db8::/32"))
        config = config_from(options)
        self.assertEqual(config.policy.auth_url, "http://127.0.0.1:1/login")
        self.assertEqual(
            (config.limits.max_auth_failures, config.limits.auth_failure_window,
             [str(n) for n in config.limits.limit_exempt]),
            (3, 60, ["10.0.0.0/8", "2001:db8::/32"]))

    def test_login_check_off_and_loopback_exempt_by_default(self):
        config = config_from(self.parse(self.arguments()))
        self.assertIsNone(config.policy.auth_url)
        self.assertEqual([str(n) for n in config.limits.limit_exempt], ["127.0.0.0/8", "::1/128"])
        self.assertEqual((config.limits.max_auth_failures, config.limits.auth_failure_window),
                         (5, 300))

    def test_empty_limit_exempt_exempts_nobody(self):
        config = config_from(self.parse(self.arguments(limit_exempt="")))
        self.assertEqual(config.limits.limit_exempt, ())
        self.assertFalse(config.limits.exempt("127.0.0.1"))

    def test_bad_limit_exempt(self):
        line, code = self.failure(self.arguments(limit_exempt="127.0.0.0/8,10.1.2.3/8"))
        self.assertEqual(line, "smtpproxy: --limit_exempt: 10.1.2.3/8 has host bits set\n")
        self.assertEqual(code, 2)

    def test_missing_mandatory(self):
        line, code = self.failure(self.arguments(api=None, listen=None))
        self.assertEqual(line, "smtpproxy: missing mandatory option --listen or --listen_tls, --api (see --help)\n")
        self.assertEqual(code, 2)

    def test_unreadable_key(self):
        line, code = self.failure(self.arguments(tls_key="/nonexistent/key.pem"))
        self.assertEqual(line, "smtpproxy: cannot read key /nonexistent/key.pem: No such file or directory\n")
        self.assertEqual(code, 2)

    def test_key_not_matching(self):
        directory = self.mktemp()
        os.mkdir(directory)
        other = make_certificates(directory).key_path
        line, _ = self.failure(self.arguments(tls_key=other))
        self.assertIn("does not match certificate", line)

    def test_garbage_certificate(self):
        line, _ = self.failure(self.arguments(tls_cert=self.key))
        self.assertTrue(line.startswith(f"smtpproxy: cannot read certificate {self.key}"))

    def test_upstream_connect_timeout_follows_upstream_timeout(self):
        options = self.parse(self.arguments(upstream_timeout=7))
        self.assertEqual(config_from(options).upstream.connect_timeout, 7)

    def test_recipient_checks(self):
        config = config_from(self.parse(self.arguments()))
        self.assertEqual((config.verify_recipients, config.verify_cache_time), (False, 60))
        options = self.parse(self.arguments(verify_cache_time=5) + ["--verify_recipients"])
        config = config_from(options)
        self.assertEqual((config.verify_recipients, config.verify_cache_time), (True, 5))

    def test_bare_lf(self):
        self.assertEqual(config_from(self.parse(self.arguments())).limits.bare_lf, "normalize")
        options = self.parse(self.arguments(bare_lf="reject"))
        self.assertEqual(config_from(options).limits.bare_lf, "reject")
        line, code = self.failure(self.arguments(bare_lf="strip"))
        self.assertEqual((line, code), ("smtpproxy: --bare_lf must be one of normalize, reject\n", 2))

    def test_bad_loglevel(self):
        line, _ = self.failure(self.arguments(loglevel="loud"))
        self.assertIn("--loglevel must be one of debug, info, warn, error, fatal", line)

    def test_counts_that_cannot_be_zero(self):
        """No API request, or no message, could ever pass: a start-up error, one line each."""
        for name in ("api_connections", "api_queue", "header_memory"):
            for value in (0, -1):
                self.stderr.truncate(0)
                self.stderr.seek(0)
                line, code = self.failure(self.arguments(**{name: value}))
                self.assertEqual(line, f"smtpproxy: --{name} must be at least 1 (not {value})\n")
                self.assertEqual(code, 2)

    def test_unknown_user(self):
        line, _ = self.failure(self.arguments(user="no-such-user-here"))
        self.assertEqual(line, "smtpproxy: --user: no such user no-such-user-here\n")

    def test_upstream_plain_by_default(self):
        upstream = config_from(self.parse(self.arguments())).upstream
        self.assertEqual((upstream.tls, upstream.username, upstream.client_tls), ("none", None, None))

    def test_upstream_tls_and_login(self):
        """The CA and the password file are read at start; only the file's first line counts."""
        password_file = self.mktemp()
        with open(password_file, "w", encoding="utf-8") as f:
            f.write("s3cr\u00e9t\nignored\n")
        options = self.parse(self.arguments(
            upstream_tls="starttls", upstream_ca=self.ca, upstream_user="ann",
            upstream_password_file=password_file,
        ))
        upstream = config_from(options).upstream
        self.assertEqual((upstream.tls, upstream.username), ("starttls", "ann"))
        self.assertEqual(upstream.password, "s3cr\u00e9t")
        self.assertIsNotNone(upstream.trust_root)

    def test_upstream_password_option(self):
        options = self.parse(self.arguments(
            upstream_tls="tls", upstream_user="ann", upstream_password="s3cret"
        ))
        self.assertEqual(config_from(options).upstream.password, "s3cret")

    def test_bad_upstream_tls(self):
        line, code = self.failure(self.arguments(upstream_tls="ssl"))
        self.assertEqual(line, "smtpproxy: --upstream_tls must be one of none, starttls, tls\n")
        self.assertEqual(code, 2)

    def test_missing_upstream_ca(self):
        line, code = self.failure(self.arguments(upstream_tls="tls", upstream_ca="/nonexistent/ca.pem"))
        self.assertEqual(
            line, "smtpproxy: cannot read CA file /nonexistent/ca.pem: No such file or directory\n"
        )
        self.assertEqual(code, 2)

    def test_upstream_ca_without_certificate(self):
        line, _ = self.failure(self.arguments(upstream_tls="tls", upstream_ca=self.key))
        self.assertTrue(line.startswith(f"smtpproxy: cannot read CA file {self.key}: "))

    def test_credentials_without_tls(self):
        line, code = self.failure(self.arguments(upstream_user="ann", upstream_password="s3cret"))
        self.assertEqual(
            line,
            "smtpproxy: upstream credentials need upstream TLS (starttls or tls): "
            "they are never sent in clear\n",
        )
        self.assertEqual(code, 2)
        self.assertNotIn("s3cret", self.stdout.getvalue())

    def test_user_without_password(self):
        line, _ = self.failure(self.arguments(upstream_tls="tls", upstream_user="ann"))
        self.assertIn("an upstream user needs a password", line)

    def test_two_passwords(self):
        line, _ = self.failure(self.arguments(
            upstream_tls="tls", upstream_user="ann", upstream_password="a",
            upstream_password_file=self.key,
        ))
        self.assertIn("not both", line)

    def test_unreadable_password_file(self):
        line, _ = self.failure(self.arguments(
            upstream_tls="tls", upstream_user="ann", upstream_password_file="/nonexistent/pw"
        ))
        self.assertEqual(
            line, "smtpproxy: cannot read password file /nonexistent/pw: No such file or directory\n"
        )

    def test_tls_policy(self):
        """Mozilla intermediate by default; both sides tunable; nonsense refused at start."""
        options = self.parse(self.arguments())
        self.assertEqual(options["tls"].policy, TLSPolicy())
        self.assertEqual(options["upstream"].tls_policy, TLSPolicy())
        options = self.parse(self.arguments(
            tls_min_version="1.3", upstream_tls_min_version="1.0", upstream_tls_ciphers="HIGH"))
        self.assertEqual(options["tls"].policy.min_version, "1.3")
        self.assertEqual(options["upstream"].tls_policy, TLSPolicy("1.0", "HIGH"))

    def test_bad_tls_policy(self):
        line, code = self.failure(self.arguments(tls_min_version="1.4"))
        self.assertEqual(line, "smtpproxy: --tls_min_version must be one of 1.0, 1.1, 1.2, 1.3\n")
        self.assertEqual(code, 2)
        self.stderr.truncate(0)
        self.stderr.seek(0)
        line, _ = self.failure(self.arguments(upstream_tls_ciphers="NO-SUCH-CIPHER"))
        self.assertEqual(line, "smtpproxy: --upstream_tls_ciphers: no usable cipher in 'NO-SUCH-CIPHER'\n")

    def test_version(self):
        with self.assertRaises(SystemExit) as raised:
            self.parse(["--version"])
        self.assertEqual(raised.exception.code, 0)
        self.assertRegex(self.stdout.getvalue(), r"^smtpproxy \d+\.\d+\.\d+\n$")

    def test_h_is_help(self):
        """C{-h} prints what C{--help} prints and exits 0."""
        texts = []
        for flag in ["-h", "--help"]:
            with self.assertRaises(SystemExit) as raised:
                self.parse([flag])
            self.assertEqual(raised.exception.code, 0)
            texts.append(self.stdout.getvalue())
            self.stdout.seek(0)
            self.stdout.truncate()
        self.assertEqual(texts[0], texts[1])
        self.assertIn("-h, --help", texts[0])

    def test_help_spells_listen_tls_with_underscore(self):
        self.assertIn("--listen_tls=", str(Options()))

    def test_help_shows_defaults(self):
        text = " ".join(str(Options()).split())  # as usage.Options wraps it
        self.assertIn("--api_timeout=", text)
        self.assertIn("[default: 30.0]", text)

    def test_implicit_tls_alone(self):
        options = self.parse(self.arguments(listen=None, listen_tls="127.0.0.1:465"))
        self.assertEqual(options["listen_tls"], ["127.0.0.1:465"])
