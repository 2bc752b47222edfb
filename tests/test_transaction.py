"""
Tests for L{smtpproxy.transaction} on its own: a L{Transaction} and its
L{Message} given plain stand-ins as their L{Services}, with no factory and
no session, as the data path only calls forward into what it is given.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy import replies
from smtpproxy.answer import Decision
from smtpproxy.auth import Login
from smtpproxy.config import Limits
from smtpproxy.headers import Budget
from smtpproxy.metrics import Metrics
from smtpproxy.transaction import Services, Transaction

QUEUED = replies.Reply(250, "2.0.0 Ok: queued as ABC")


class StandInTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.metrics = Metrics()
        self.requests = []
        self.deliveries = []
        self.decision = Deferred()
        self.full = []
        self.services = Services(
            clock=self.clock, limits=Limits(), policy=self, deliver=self.deliver,
            recipient_check=None, metrics=self.metrics, header_budget=Budget(1 << 20),
            header_memory_full=self.full.append,
        )
        self.transaction = Transaction(self.services, Login("alice", "pw"), "192.0.2.1", "c.test")
        self.transaction.validateFrom(("c.test", "192.0.2.1"), "alice@example.com")
        self.transaction.validateTo("bob@example.net")

    def check(self, request):
        self.requests.append(request)
        return self.decision

    def deliver(self, sender, recipients, data, mail_parameters, rcpt_parameters, client=None):
        self.deliveries.append((sender, recipients, data.read(), client))
        return succeed(QUEUED)

    def count(self, outcome):
        return self.metrics.registry.get_sample_value(
            "smtpproxy_messages_total", {"outcome": outcome})

    def test_allowed_message_is_delivered_through_the_callable(self):
        message = self.transaction.begin()
        message.dataReceived(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(len(self.requests), 1)
        self.clock.advance(0.25)
        self.decision.callback(Decision(headers=(("X-Checked", "yes"),)))
        reply = self.successResultOf(message.eomReceived())
        self.assertEqual(reply, QUEUED)
        ((sender, recipients, data, client),) = self.deliveries
        self.assertEqual((sender, recipients, client), ("alice@example.com", ["bob@example.net"], None))
        self.assertIn(b"X-Checked: yes\r\n", data)
        self.assertEqual(self.count("delivered"), 1)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "smtpproxy_api_latency_seconds_sum"), 0.25)

    def test_denied_message_is_not_delivered(self):
        message = self.transaction.begin()
        message.dataReceived(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.decision.callback(Decision(reply=replies.Reply(550, "5.7.1 not you")))
        self.assertEqual(self.successResultOf(message.eomReceived()).code, 550)
        self.assertEqual((self.deliveries, self.count("denied")), ([], 1))

    def test_full_header_memory_is_reported_with_the_client(self):
        services = Services(
            clock=self.clock, limits=Limits(), policy=self, deliver=self.deliver,
            recipient_check=None, metrics=self.metrics, header_budget=Budget(0),
            header_memory_full=self.full.append,
        )
        message = Transaction(services, Login("alice", "pw"), "192.0.2.1", "c.test").begin()
        message.dataReceived(b"X-Long: " + b"x" * 9000)
        self.assertEqual(self.full, ["192.0.2.1"])
        self.assertEqual(self.successResultOf(message.eomReceived()), replies.HEADER_MEMORY)
