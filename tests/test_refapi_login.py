"""
The reference API's login check (C{--auth_api}, issue 9) and its cache of
successful password checks.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpproxy import Policy
from smtpproxy.auth import Login
from smtpproxy.login import build_login_request
from smtpproxy.refapi import PolicyResource, PolicySite, passwords
from smtpproxy.refapi.decision import (
    LOGIN_FAILED,
    BadRequest,
    LoginRequest,
    RateLimiter,
    decide,
    parse_request,
)
from smtpproxy.refapi.logincache import LoginCache
from tests.support.client import submit
from tests.support.loopback import listen_loopback
from tests.support.stack import Stack
from tests.support.mail import INVALID, MESSAGE, plain
from tests.support.refapi import PASSWORD, POLICY, FakeThreadsReactor, policy
from tests import test_refapi


class LoginRequestTests(SynchronousTestCase):
    def test_told_apart_by_mechanism(self):
        body = build_login_request(Login("alice", PASSWORD), "PLAIN", "192.0.2.1", "c.example")
        self.assertEqual(parse_request(json.dumps(body).encode()),
                         LoginRequest("alice", PASSWORD))

    def test_needs_the_credentials(self):
        body = json.dumps({"username": "alice", "mechanism": "PLAIN"}).encode()
        self.assertEqual(str(self.assertRaises(BadRequest, parse_request, body)),
                         "'password' is missing or not a string")

    def test_allowed_on_the_password_alone(self):
        alice = policy().users["alice"]
        self.assertEqual(decide(alice, LoginRequest("alice", PASSWORD), RateLimiter(), 0),
                         {"allow": True})
        self.assertEqual(decide(None, LoginRequest("alice", "x"), RateLimiter(), 0),
                         {"allow": False, "reason": LOGIN_FAILED})


class LoginCacheTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.cache = LoginCache(self.clock, ttl=300, capacity=3)

    def test_remembers_for_the_ttl(self):
        self.cache.add("alice", PASSWORD)
        self.assertTrue(self.cache.verified("alice", PASSWORD))
        self.assertFalse(self.cache.verified("alice", PASSWORD + "x"))
        self.assertFalse(self.cache.verified("bob", PASSWORD))
        self.clock.advance(300)
        self.assertFalse(self.cache.verified("alice", PASSWORD))
        self.assertEqual(len(self.cache), 0)

    def test_pairs_are_unambiguous(self):
        self.cache.add("al", "ice" + PASSWORD)
        self.assertFalse(self.cache.verified("alice", PASSWORD))

    def test_bounded_and_no_password_kept(self):
        for n in range(10):
            self.cache.add(f"user{n}", PASSWORD)
        self.assertEqual(len(self.cache), 3)
        self.assertTrue(self.cache.verified("user9", PASSWORD))
        self.assertFalse(self.cache.verified("user0", PASSWORD))
        self.assertNotIn(PASSWORD.encode(), b"".join(self.cache._expiry))

    def test_keyed_per_process(self):
        """Another key, other hashes: the entries cannot be looked up without this key."""
        other = LoginCache(self.clock)
        self.assertNotEqual(self.cache._digest("alice", PASSWORD), other._digest("alice", PASSWORD))


class ResourceCacheTests(SynchronousTestCase):
    """A login, then messages: one password check in the thread pool."""

    post = test_refapi.ResourceTests.post
    answer = test_refapi.ResourceTests.answer

    def setUp(self):
        self.reactor = FakeThreadsReactor()
        self.resource = PolicyResource(self.reactor, policy())

    def login(self, password=PASSWORD):
        return self.post({"username": "alice", "password": password, "mechanism": "PLAIN",
                          "client_address": "192.0.2.1", "helo": "c.example"})

    def message(self):
        return self.post({"username": "alice", "password": PASSWORD,
                          "from": "alice@example.com", "to": ["x@example.net"]})

    def test_login_then_messages_check_once(self):
        http = self.login()
        self.assertEqual(len(self.reactor.queued), 1)
        self.reactor.work()
        self.assertEqual(self.answer(http), (200, {"allow": True}))
        for _ in range(2):
            http = self.message()
            self.assertEqual(self.reactor.queued, [])
            self.assertTrue(self.answer(http)[1]["allow"])

    def test_wrong_passwords_always_checked(self):
        for _ in range(3):
            http = self.login("wrong")
            self.assertEqual(len(self.reactor.queued), 1)
            self.reactor.work()
            self.assertEqual(self.answer(http), (200, {"allow": False, "reason": LOGIN_FAILED}))

    def test_reload_forgets(self):
        self.login()
        self.reactor.work()
        self.resource.use(policy())
        self.login()
        self.assertEqual(len(self.reactor.queued), 1)

    def test_reload_during_the_check_is_not_remembered(self):
        self.login()
        self.resource.use(policy(POLICY))
        self.reactor.work()
        self.login()
        self.assertEqual(len(self.reactor.queued), 1)


class EndToEndCacheTests(TestCase):
    """The real proxy with the reference API as both --api and --auth_api."""

    @defer.inlineCallbacks
    def test_one_scrypt_for_a_login_and_several_messages(self):
        calls = []
        scrypt = passwords._scrypt
        self.patch(passwords, "_scrypt", lambda *a: calls.append(a[0]) or scrypt(*a))
        text = POLICY.replace("[users.alice]", '[users.alice]\nrate = "unlimited"')
        server = listen_loopback(reactor, PolicySite(PolicyResource(reactor, policy(text))))
        self.addCleanup(server.close)
        url = f"http://127.0.0.1:{server.port}"
        stack = Stack(reactor, self.mktemp(), login_check=True,
                      policy=Policy(url=url + "/check", auth_url=url + "/login"))
        self.addCleanup(stack.close)
        client = yield stack.session(login=False)
        self.addCleanup(client.close)
        self.assertEqual(str((yield client.command(plain("alice", "wrong")))), INVALID)
        yield client.command(plain("alice", PASSWORD), expect=235)
        codes = []
        for _ in range(3):
            codes.append((yield submit(client, b"alice@example.com", b"x@example.net",
                                       MESSAGE)).code)
        self.assertEqual(codes, [250, 250, 250])
        self.assertEqual(calls, ["wrong", PASSWORD])
