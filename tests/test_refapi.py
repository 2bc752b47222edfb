"""
Tests for L{smtpproxy.refapi}: the hash scheme and its command, the policy
file, the pure decisions with explicit times, the resource with a fake
thread pool and a Clock, the twistd service, and the whole contract over
real HTTP with the proxy's own L{PolicyClient}.
"""

import getpass
import io
import json
import signal
import sys
from types import MappingProxyType

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from smtpproxy.answer import Decision, build_request
from smtpproxy.auth import Login
from smtpproxy.config import Policy
from smtpproxy.policy import PolicyClient
from smtpproxy.refapi import Options, PolicyResource, PolicySite, makeService
from smtpproxy.refapi.__main__ import main as refapi_main
from smtpproxy.refapi.decision import (
    LOGIN_FAILED,
    BadRequest,
    RateLimiter,
    Request,
    decide,
    parse_request,
)
from smtpproxy.refapi.passwords import N, MalformedHash, PasswordHash, decoy, make_hash
from smtpproxy.refapi.policyfile import PolicyFile, PolicyFileError, Rate, load
from smtpproxy.refapi.service import ReloadOnHangup
from smtpproxy.replies import Reply
from tests.support.loopback import listen_loopback
from tests.support.refapi import PASSWORD, POLICY, FakeThreadsReactor, cheap_hash, policy

def request(sender="alice@example.com", to=("x@example.net",), username="alice"):
    return Request(username, PASSWORD, sender, tuple(to))


class PasswordTests(SynchronousTestCase):
    def test_round_trip(self):
        hashed = make_hash("pässwörd", n=16, r=1)
        line = hashed.line()
        self.assertTrue(line.startswith("scrypt$16$1$1$"))
        self.assertEqual(PasswordHash.parse(line), hashed)
        self.assertTrue(PasswordHash.parse(line).verify("pässwörd"))

    def test_wrong_password(self):
        hashed = make_hash(PASSWORD, n=16, r=1)
        self.assertFalse(hashed.verify(PASSWORD + " "))
        self.assertFalse(hashed.verify(""))

    def test_salted(self):
        self.assertNotEqual(cheap_hash(), cheap_hash())

    def test_default_cost(self):
        self.assertTrue(make_hash(PASSWORD).line().startswith(f"scrypt${N}$8$1$"))

    def test_secrets_not_in_repr(self):
        hashed = make_hash(PASSWORD, n=16, r=1)
        self.assertNotIn(hashed.line().split("$")[5], repr(hashed))
        self.assertNotIn(repr(hashed.digest), repr(hashed))

    def test_decoy_matches_nothing(self):
        self.assertFalse(decoy().verify(""))
        self.assertEqual(decoy().n, N)

    def test_malformed_lines(self):
        salt, digest = cheap_hash().split("$")[4:]
        for line in [
            "",
            PASSWORD,
            f"bcrypt$16$1$1${salt}${digest}",
            f"scrypt$16$1${salt}${digest}",
            f"scrypt$sixteen$1$1${salt}${digest}",
            f"scrypt$15$1$1${salt}${digest}",
            f"scrypt$1$1$1${salt}${digest}",
            f"scrypt$65536$1$1${salt}${digest}",
            f"scrypt$16$0$1${salt}${digest}",
            f"scrypt$16$1$0${salt}${digest}",
            f"scrypt$1048576$8$1${salt}${digest}",
            f"scrypt$16$1$1$not*base64${digest}",
            f"scrypt$16$1$1$${digest}",
            f"scrypt$16$1$1${salt}$AAAA",
        ]:
            self.assertRaises(MalformedHash, PasswordHash.parse, line)


class Terminal(io.StringIO):
    def isatty(self):
        return True


class HashCommandTests(SynchronousTestCase):
    def run_hash(self, stdin):
        stdout = io.StringIO()
        refapi_main(["hash"], stdin=stdin, stdout=stdout)
        return PasswordHash.parse(stdout.getvalue().strip())

    def test_from_stdin(self):
        hashed = self.run_hash(io.StringIO(PASSWORD + "\n"))
        self.assertTrue(hashed.verify(PASSWORD))
        self.assertEqual(hashed.n, N)

    def test_from_terminal_asked_twice(self):
        answers = iter([PASSWORD, PASSWORD])
        self.patch(getpass, "getpass", lambda prompt: next(answers))
        self.assertTrue(self.run_hash(Terminal()).verify(PASSWORD))

    def test_terminal_mismatch(self):
        answers = iter([PASSWORD, "typo"])
        self.patch(getpass, "getpass", lambda prompt: next(answers))
        self.assertRaises(SystemExit, self.run_hash, Terminal())

    def test_empty_password(self):
        self.assertRaises(SystemExit, self.run_hash, io.StringIO("\n"))


class PolicyFileTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_load(self):
        loaded = load(self.write(POLICY))
        alice, bob = loaded.users["alice"], loaded.users["bob"]
        self.assertTrue(alice.password.verify(PASSWORD))
        self.assertEqual(alice.senders, {"alice@example.com", "@example.org"})
        self.assertEqual(alice.recipient_domains, {"example.net", "example.org"})
        self.assertEqual(alice.headers, (("X-Originating-IP", None), ("X-Account", "alice")))
        self.assertEqual(alice.rate, Rate(2, 60, "2/minute"))
        self.assertEqual((bob.senders, bob.recipient_domains), ({"bob@example.com", ""}, {"*"}))
        self.assertEqual((bob.headers, bob.rate), ((), None))

    def test_unreadable(self):
        path = self.mktemp()
        error = self.assertRaises(PolicyFileError, load, path)
        self.assertEqual(str(error), f"{path}: No such file or directory")

    def test_not_toml(self):
        path = self.write('[users.alice]\npassword = "unterminated\n')
        error = self.assertRaises(PolicyFileError, load, path)
        self.assertTrue(str(error).startswith(f"{path}: not valid TOML: "))
        self.assertIn("line 2", str(error))

    def test_defect_named_with_file(self):
        path = self.write(POLICY.replace('rate = "2/minute"', 'rate = "2/fortnight"'))
        error = self.assertRaises(PolicyFileError, load, path)
        self.assertEqual(
            str(error),
            f"{path}: [users.alice] rate must be \"N/second|minute|hour|day\" with N >= 1,"
            " not '2/fortnight'",
        )

    def assertRefused(self, text, message):
        error = self.assertRaises(PolicyFileError, policy, text)
        self.assertIn(message, str(error))

    def user(self, *lines, password=None):
        password = cheap_hash() if password is None else password
        return "\n".join(["[users.alice]", f'password = "{password}"', *lines])

    def test_user_errors(self):
        senders = 'senders = ["alice@example.com"]'
        domains = 'recipient_domains = ["*"]'
        for lines, message in [
            ((senders,), "[users.alice]: no recipient_domains, here or in [defaults]"),
            ((domains,), "[users.alice]: missing senders"),
            ((domains, 'senders = "alice@example.com"'), "[users.alice] senders: must be a list"),
            ((domains, "senders = ['alice']"), "[users.alice] senders: 'alice' is not an address"),
            ((domains, "senders = ['@']"), "[users.alice] senders: '@' is not an address"),
            ((senders, "recipient_domains = ['a b']"), "recipient_domains: 'a b' is not a domain"),
            ((senders, domains, 'rate = "0/hour"'), 'rate must be "N/second|minute|hour|day"'),
            ((senders, domains, "rate = 5"), "[users.alice] rate: must be a string"),
            ((senders, domains, 'recipient_domain = ["*"]'), "unknown key 'recipient_domain'"),
            ((senders, domains, 'add_headers = { "Bad Name" = "x" }'), "header 'Bad Name': "),
            ((senders, domains, 'add_headers = { X-A = "a\\nb" }'), "header 'X-A': "),
            ((senders, domains, "add_headers = { X-A = 1 }"), "add_headers: values must be strings"),
            ((senders, domains, "remove_headers = ['X:']"), "header 'X:': "),
        ]:
            self.assertRefused(self.user(*lines), message)

    def test_clear_text_password_refused(self):
        lines = ('senders = ["alice@example.com"]', 'recipient_domains = ["*"]')
        self.assertRefused(self.user(*lines, password=PASSWORD), "[users.alice] password: not a")

    def test_file_errors(self):
        for text, message in [
            ("", "no user: add a [users.NAME] table"),
            ("users = 1", "the top level users: must be a table"),
            ("users = { alice = 1 }", "[users.alice] must be a table"),
            ("[user.alice]", "the top level: unknown key 'user'"),
            ("[defaults]\nsenders = []\n[users.a]", "[defaults]: unknown key 'senders'"),
        ]:
            self.assertRefused(text, message)


class ParseRequestTests(SynchronousTestCase):
    def test_request(self):
        body = build_request(Login("alice", PASSWORD), "a@example.com", ["x@example.net"], [],
                             "192.0.2.1", "client.example")
        self.assertEqual(
            parse_request(json.dumps(body).encode()),
            Request("alice", PASSWORD, "a@example.com", ("x@example.net",)),
        )

    def test_bad_requests(self):
        good = {"username": "alice", "password": PASSWORD, "from": "", "to": []}
        for body, message in [
            (b"{", "body is not JSON"),
            (b"\xff", "body is not JSON"),
            (b"[]", "body is not a JSON object"),
            ({**good, "username": None}, "'username' is missing or not a string"),
            ({k: v for k, v in good.items() if k != "password"}, "'password' is missing or not a string"),
            ({**good, "to": "x@example.net"}, "'to' is missing or not a list"),
            ({**good, "to": [1]}, "'to' must be a list of strings"),
        ]:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.assertEqual(str(self.assertRaises(BadRequest, parse_request, raw)), message)


class DecideTests(SynchronousTestCase):
    def setUp(self):
        self.users = policy().users
        self.limiter = RateLimiter()

    def decide(self, asked, user="alice", now=0.0):
        return decide(self.users.get(user), asked, self.limiter, now)

    def test_allowed(self):
        self.assertEqual(
            self.decide(request()),
            {"allow": True, "headers": [{"name": "X-Originating-IP", "value": None},
                                        {"name": "X-Account", "value": "alice"}]},
        )

    def test_login_failed(self):
        self.assertEqual(self.decide(request(), user=None),
                         {"allow": False, "reason": LOGIN_FAILED})

    def test_senders(self):
        for sender, allowed in [
            ("alice@example.com", True),
            ("alice@EXAMPLE.com", True),
            ("Alice@example.com", False),
            ("anyone@example.org", True),
            ("anyone@EXAMPLE.ORG", True),
            ("anyone@sub.example.org", False),
            ("bob@example.com", False),
            ("", False),
        ]:
            self.limiter = RateLimiter()
            self.assertEqual(self.decide(request(sender))["allow"], allowed, sender)

    def test_null_sender_only_when_listed(self):
        self.assertTrue(self.decide(request("", username="bob"), user="bob")["allow"])

    def test_sender_refused_names_it(self):
        self.assertEqual(
            self.decide(request("bob@example.com")),
            {"allow": False, "reason": "sender bob@example.com not allowed for alice"},
        )
        self.assertEqual(self.decide(request(""))["reason"], "sender <> not allowed for alice")

    def test_recipient_domains(self):
        to = ["a@example.net", "b@EXAMPLE.org", "c@evil.example", "d@Evil.Example", "e@x.test"]
        self.assertEqual(
            self.decide(request(to=to)),
            {"allow": False, "reason": "recipient domain not allowed: evil.example, x.test"},
        )

    def test_any_domain(self):
        self.assertTrue(self.decide(request("bob@example.com", ["x@a.test"]), user="bob")["allow"])

    def test_rate(self):
        limited = {
            "allow": False, "temporary": True,
            "reason": "message rate 2/minute reached, try again later",
        }
        self.assertEqual([self.decide(request(), now=0)["allow"] for _ in range(2)], [True] * 2)
        self.assertEqual(self.decide(request(), now=29), limited)
        self.assertTrue(self.decide(request(), now=30)["allow"])
        self.assertEqual(self.decide(request(), now=31), limited)
        outcomes = [self.decide(request(), now=3600)["allow"] for _ in range(3)]
        self.assertEqual(outcomes, [True, True, False])

    def test_only_allowed_messages_count(self):
        for _ in range(3):
            self.assertFalse(self.decide(request("bob@example.com"))["allow"])
            self.assertFalse(self.decide(request(), user=None)["allow"])
        self.assertEqual([self.decide(request())["allow"] for _ in range(3)], [True, True, False])

    def test_rate_per_user(self):
        other = policy(POLICY.replace("[users.bob]", "[users.carol]\nsenders = ['@example.com']"
                                      f'\npassword = "{cheap_hash()}"\n[users.bob]'))
        self.users = other.users
        for _ in range(2):
            self.decide(request())
        self.assertTrue(self.decide(request("carol@example.com"), user="carol")["allow"])

    def test_retain_forgets(self):
        for _ in range(2):
            self.decide(request())
        self.limiter.retain({"bob"})
        self.assertTrue(self.decide(request())["allow"])


class ResourceTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeThreadsReactor()
        self.resource = PolicyResource(self.reactor, policy())

    def post(self, body):
        http = DummyRequest([b"check"])
        http.method = b"POST"
        http.content = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
        http.render(self.resource)
        return http

    def ask(self, username="alice", password=PASSWORD, sender="alice@example.com"):
        body = {"username": username, "password": password, "from": sender,
                "to": ["x@example.net"]}
        http = self.post(body)
        self.reactor.work()
        return http

    def answer(self, http):
        self.assertEqual(http.responseHeaders.getRawHeaders(b"Content-Type"),
                         [b"application/json"])
        return http.responseCode, json.loads(b"".join(http.written))

    def test_answers(self):
        code, answer = self.answer(self.ask())
        self.assertEqual((code, answer["allow"]), (200, True))
        self.assertEqual(self.answer(self.ask(password="wrong")),
                         (200, {"allow": False, "reason": LOGIN_FAILED}))
        self.assertEqual(self.answer(self.ask(username="mallory")),
                         (200, {"allow": False, "reason": LOGIN_FAILED}))

    def test_bad_request(self):
        http = self.post(b"not json")
        self.assertEqual(self.answer(http), (400, {"error": "body is not JSON"}))
        self.assertEqual(http.finished, 1)

    def test_check_off_the_reactor_thread(self):
        http = self.post({"username": "alice", "password": PASSWORD, "from": "", "to": []})
        self.assertEqual((http.written, len(self.reactor.queued)), ([], 1))

    def test_unknown_user_costs_a_check(self):
        self.post({"username": "mallory", "password": PASSWORD, "from": "", "to": []})
        (_, check, args, _), = self.reactor.queued
        self.assertEqual((check.__self__.n, args), (N, (PASSWORD,)))
        self.assertIsInstance(check.__self__, PasswordHash)

    def test_rate_uses_the_clock(self):
        self.assertEqual([self.answer(self.ask())[1]["allow"] for _ in range(3)],
                         [True, True, False])
        self.reactor.advance(30)
        self.assertTrue(self.answer(self.ask())[1]["allow"])

    def test_client_gone(self):
        http = self.post({"username": "alice", "password": PASSWORD, "from": "", "to": []})
        http.processingFailed(Failure(ConnectionDone()))
        self.reactor.work()
        self.assertEqual((http.written, http.finished), ([], 0))

    def test_crash_is_500(self):
        broken = PasswordHash(3, 1, 1, b"salt", b"digest-of-sixteen")
        alice = evolve(policy().users["alice"], password=broken)
        self.resource.use(PolicyFile(MappingProxyType({"alice": alice})))
        self.assertEqual(self.answer(self.ask()), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_use_new_policy(self):
        self.resource.use(policy(POLICY.replace("[users.alice]", "[users.ann]")))
        self.assertEqual(self.answer(self.ask())[1]["reason"], LOGIN_FAILED)
        self.assertTrue(self.answer(self.ask(username="ann"))[1]["allow"])


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.write(POLICY)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def write(self, text):
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def options(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_policy_mandatory(self):
        self.assertRaises(SystemExit, self.options)
        self.assertEqual(self.stderr.getvalue(),
                         "smtpproxy: missing mandatory option --policy (see --help)\n")

    def test_bad_file_stops_start(self):
        self.write("[users.alice]\n")
        self.assertRaises(SystemExit, self.options, "--policy", self.path)
        self.assertEqual(self.stderr.getvalue(),
                         f"smtpproxy: {self.path}: [users.alice]: missing password\n")

    def test_listens_on_loopback_by_default(self):
        memory = MemoryReactorClock()
        service = makeService(self.options("--policy", self.path), memory)
        service.startService()
        self.addCleanup(service.stopService)
        ((port, site, _, interface),) = memory.tcpServers
        self.assertEqual((port, interface), (8025, "127.0.0.1"))
        self.assertIsInstance(site, PolicySite)

    def test_reload_on_hangup(self):
        resource = PolicyResource(FakeThreadsReactor(), load(self.path))
        hangup = ReloadOnHangup(FakeThreadsReactor(), self.path, resource)
        before = signal.getsignal(signal.SIGHUP)
        hangup.startService()
        self.write(POLICY.replace("[users.alice]", "[users.ann]"))
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual(set(resource.policy.users), {"ann", "bob"})
        self.write("broken")
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual(set(resource.policy.users), {"ann", "bob"})
        hangup.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class HttpTests(TestCase):
    """The contract end to end: twisted.web on loopback, the proxy's own client."""

    def setUp(self):
        text = POLICY.replace('rate = "2/minute"', 'rate = "1/hour"')
        server = listen_loopback(reactor, PolicySite(PolicyResource(reactor, policy(text))))
        self.addCleanup(server.close)
        self.client = PolicyClient(reactor, Policy(url=f"http://127.0.0.1:{server.port}/check"))
        self.addCleanup(self.client.close)

    def ask(self, username, password, sender="alice@example.com"):
        return self.client.check(build_request(
            Login(username, password), sender, ["x@example.net"],
            [{"name": "Subject", "value": "hi"}], "192.0.2.1", "client.example",
        ))

    @inlineCallbacks
    def test_contract(self):
        refused = Reply(550, f"5.7.1 {LOGIN_FAILED}")
        self.assertEqual((yield self.ask("alice", "wrong")), Decision(reply=refused))
        self.assertEqual((yield self.ask("mallory", PASSWORD)), Decision(reply=refused))
        self.assertEqual(
            (yield self.ask("alice", PASSWORD, "bob@example.com")),
            Decision(reply=Reply(550, "5.7.1 sender bob@example.com not allowed for alice")),
        )
        self.assertEqual(
            (yield self.ask("alice", PASSWORD)),
            Decision(headers=(("X-Originating-IP", None), ("X-Account", "alice"))),
        )
        self.assertEqual(
            (yield self.ask("alice", PASSWORD)),
            Decision(reply=Reply(450, "4.7.1 message rate 1/hour reached, try again later")),
        )
