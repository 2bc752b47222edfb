"""
Tests for L{smtpproxy.replies}: foreign text made safe, enhanced codes.
"""

from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.replies import Reply, relayed, sanitise


class SanitiseTests(SynchronousTestCase):
    def test_one_line(self):
        self.assertEqual(sanitise("a\r\n250 2.0.0 fake\rb\nc"), "a 250 2.0.0 fake b c")

    def test_c1_and_unicode_separators(self):
        self.assertEqual(sanitise("a\x85b\u2028c\u2029d\x9b"), "a b c d")

    def test_bounded(self):
        self.assertEqual(len(sanitise("x" * 1000)), 200)
        self.assertEqual(sanitise("abc   def", limit=4), "abc")


class RelayedTests(SynchronousTestCase):
    def test_enhanced_code_added(self):
        self.assertEqual(relayed(452, "4.3.1", "Insufficient storage"), Reply(452, "4.3.1 Insufficient storage"))

    def test_enhanced_code_kept(self):
        self.assertEqual(relayed(550, "5.0.0", "5.1.1 No such user"), Reply(550, "5.1.1 No such user"))

    def test_empty_text(self):
        self.assertEqual(relayed(451, "4.0.0", "\r\n"), Reply(451, "4.0.0"))
