"""
The demo that README.rst's first command starts: a mail goes through it
into the Maildir, and a wrong password is refused.
"""

import glob
import os

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from smtpproxy import demo
from smtpproxy.refapi import load
from tests.support.client import UnexpectedReply, send_mail
from tests.support.mail import MESSAGE


class DemoTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.demo = yield demo.start(reactor, os.path.abspath(self.mktemp()), 0)
        self.addCleanup(self.demo.stop)
        with open(self.demo.ca, "rb") as f:
            self.tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(f.read()))

    def send(self, password):
        return send_mail(reactor, self.demo.port, self.tls, demo.USER, password,
                         "demo@example.com", ["you@example.net"], MESSAGE)

    @defer.inlineCallbacks
    def test_mail_lands_in_the_maildir(self):
        reply = yield self.send(demo.PASSWORD)
        self.assertEqual(reply.code, 250)
        (path,) = glob.glob(os.path.join(self.demo.maildir, "new", "*"))
        with open(path, "rb") as f:
            stored = f.read()
        self.assertIn(b"X-Demo-Policy: allowed for demo\n", stored)
        self.assertTrue(stored.endswith(b"\n\nHello Bob.\n"))

    @defer.inlineCallbacks
    def test_wrong_password_refused_at_auth(self):
        """The demo checks the login at AUTH: 535, as a mail client expects."""
        failure = yield self.assertFailure(self.send("wrong"), UnexpectedReply)
        self.assertEqual(str(failure.reply), "535 5.7.8 Authentication credentials invalid")
        self.assertEqual(os.listdir(os.path.join(self.demo.maildir, "new")), [])

    def test_policy_file_kept_for_editing(self):
        self.assertEqual(list(load(self.demo.policy).users), [demo.USER])
        with open(self.demo.policy, "a", encoding="utf-8") as f:
            f.write("# edited\n")
        demo.write_policy(self.demo.policy)
        with open(self.demo.policy, encoding="utf-8") as f:
            self.assertTrue(f.read().endswith("# edited\n"))
