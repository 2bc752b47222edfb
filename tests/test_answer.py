"""
Tests for L{smtpproxy.answer}: the request object and every rule an API
answer must pass before the proxy acts on it.
"""

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpproxy.answer import DEFAULT_REASON, Decision, build_request, parse_answer
from smtpproxy.auth import Login
from smtpproxy.replies import POLICY_UNAVAILABLE, Reply

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
_TRICKY_TEXT = st.text(st.sampled_from("aZ0-: \t\r\n\x00\x7f\x85\u2028é") | st.characters())
_REFUSALS = {(550, "5.7.1 "), (450, "4.7.1 "), (451, "4.3.0 ")}


def ok(answer):
    """Parse C{answer} as the JSON body of a 200 response."""
    return parse_answer(200, json.dumps(answer).encode("utf-8"))


def changing(name, value):
    """Parse an allow with one header change."""
    return ok({"allow": True, "headers": [{"name": name, "value": value}]})


class BuildRequestTests(SynchronousTestCase):
    def test_fields(self):
        """The request has exactly the keys of docs/protocol.rst section 3, in order, recipients as a list."""
        headers = [{"name": "Subject", "value": "hé"}]
        request = build_request(
            Login("ann", "secret"), "", ("x@y.z", "v@w.x"), headers, "192.0.2.1", "client.example"
        )
        self.assertEqual(
            request,
            {
                "username": "ann",
                "password": "secret",
                "from": "",
                "to": ["x@y.z", "v@w.x"],
                "headers": headers,
                "client_address": "192.0.2.1",
                "helo": "client.example",
                "mailParameters": [],
                "rcptParameters": [{"address": "x@y.z", "parameters": []},
                                   {"address": "v@w.x", "parameters": []}],
            },
        )
        keys = ["username", "password", "from", "to", "headers", "client_address", "helo",
                "mailParameters", "rcptParameters"]
        self.assertEqual(list(request), keys)


class AllowTests(SynchronousTestCase):
    def test_bare_allow(self):
        decision = ok({"allow": True})
        self.assertTrue(decision.allowed)
        self.assertEqual(decision, Decision())
        self.assertIsNone(decision.reply)

    def test_headers(self):
        """Entries keep the API's order; a null value means remove only."""
        decision = ok(
            {
                "allow": True,
                "headers": [
                    {"name": "X-Spam", "value": "no"},
                    {"name": "Received", "value": None},
                    {"name": "X-Spam", "value": ""},
                    {"name": "X-Extra", "value": "ünïcode\ttab", "comment": "ignored"},
                ],
            }
        )
        self.assertEqual(
            decision.headers,
            (("X-Spam", "no"), ("Received", None), ("X-Spam", ""), ("X-Extra", "ünïcode\ttab")),
        )

    def test_sender(self):
        decision = ok({"allow": True, "from": "bounce@example.com"})
        self.assertEqual(decision.sender, "bounce@example.com")

    def test_null_sender(self):
        """C{""} is the null sender C{<>}, distinct from keeping the client's (C{None})."""
        self.assertEqual(ok({"allow": True, "from": ""}).sender, "")
        self.assertIsNone(ok({"allow": True}).sender)

    def test_any_2xx(self):
        self.assertTrue(parse_answer(204, b'{"allow": true}').allowed)
        self.assertTrue(parse_answer(299, b'{"allow": true}').allowed)

    def test_unknown_keys_ignored(self):
        self.assertTrue(ok({"allow": True, "score": 3.5, "extra": {"a": [1]}}).allowed)

    def test_refusal_keys_ignored_on_allow(self):
        """A well-typed C{reason} or C{temporary} does not turn an allow into a refusal."""
        self.assertTrue(ok({"allow": True, "reason": "x", "temporary": True}).allowed)


class RefuseTests(SynchronousTestCase):
    def test_reason(self):
        decision = ok({"allow": False, "reason": "Quota exceeded"})
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.reply, Reply(550, "5.7.1 Quota exceeded"))
        self.assertIsNone(decision.cause)

    def test_temporary(self):
        decision = ok({"allow": False, "reason": "Rate limit", "temporary": True})
        self.assertEqual(decision.reply, Reply(450, "4.7.1 Rate limit"))

    def test_not_temporary(self):
        self.assertEqual(ok({"allow": False, "temporary": False}).reply.code, 550)

    def test_default_reason(self):
        for answer in ({"allow": False}, {"allow": False, "reason": ""}):
            self.assertEqual(ok(answer).reply, Reply(550, f"5.7.1 {DEFAULT_REASON}"))

    def test_reason_only_control_characters(self):
        reply = ok({"allow": False, "reason": "\r\n\t"}).reply
        self.assertEqual(reply.text, f"5.7.1 {DEFAULT_REASON}")

    def test_reason_one_line(self):
        """CR, LF and other control characters cannot start a new reply line."""
        reply = ok({"allow": False, "reason": "no\r\n250 2.0.0 OK\x00\x1b[0m"}).reply
        self.assertEqual(reply, Reply(550, "5.7.1 no 250 2.0.0 OK [0m"))

    def test_reason_limited(self):
        reply = ok({"allow": False, "reason": "x" * 1000}).reply
        self.assertEqual(reply.text, "5.7.1 " + "x" * 200)

    def test_reason_cannot_claim_success(self):
        """A reason with its own enhanced code is text after ours."""
        reply = ok({"allow": False, "reason": "2.0.0 OK"}).reply
        self.assertEqual(reply, Reply(550, "5.7.1 2.0.0 OK"))
        self.assertEqual(
            ok({"allow": False, "reason": "4.2.2 full", "temporary": True}).reply,
            Reply(450, "4.7.1 4.2.2 full"),
        )

    def test_headers_ignored_on_refusal(self):
        decision = ok({"allow": False, "headers": [{"name": "X", "value": "y"}], "from": "a@b.c"})
        self.assertEqual(decision.headers, ())
        self.assertIsNone(decision.sender)


class UnavailableTests(SynchronousTestCase):
    """Everything docs/protocol.rst section 4 does not allow is 451 4.3.0, with a cause for the log."""

    def assertUnavailable(self, decision, cause):
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.reply, POLICY_UNAVAILABLE)
        self.assertIn(cause, decision.cause)

    def test_constructor(self):
        self.assertEqual(
            Decision.unavailable("down"), Decision(reply=POLICY_UNAVAILABLE, cause="down")
        )

    def test_status(self):
        for status in (100, 199, 301, 404, 500):
            decision = parse_answer(status, b'{"allow": true}')
            self.assertUnavailable(decision, f"HTTP status {status}")

    def test_not_json(self):
        for body in (b"", b"allow", b'{"allow": true', b"\xff\xfe\x00", b"[" * 100000):
            self.assertUnavailable(parse_answer(200, body), "not JSON")

    def test_not_object(self):
        for answer in ([], "allow", True, None, 1):
            self.assertUnavailable(ok(answer), "not a JSON object")

    def test_allow(self):
        for answer in ({}, {"allow": None}, {"allow": 1}, {"allow": "true"}, {"allow": []}):
            self.assertUnavailable(ok(answer), "'allow' must be a bool")

    def test_headers_not_list(self):
        for headers in (None, {}, "X: y", {"name": "X", "value": "y"}):
            answer = {"allow": True, "headers": headers}
            self.assertUnavailable(ok(answer), "'headers' must be a list")

    def test_entry_not_object(self):
        for entry in (None, ["X", "y"], "X: y"):
            answer = {"allow": True, "headers": [entry]}
            self.assertUnavailable(ok(answer), "headers[0] must be an object")

    def test_name(self):
        names = (None, 1, "", "X Spam", "X:Spam", "X-Spam:", "X\r\nBcc", "Tëst", "X\x7f", "X\t")
        for name in names:
            entries = [{"name": "Ok", "value": "v"}, {"name": name, "value": "v"}]
            self.assertUnavailable(ok({"allow": True, "headers": entries}), "headers[1]: 'name'")
        answer = {"allow": True, "headers": [{"value": "v"}]}
        self.assertUnavailable(ok(answer), "headers[0]: 'name'")

    def test_name_printable_ascii(self):
        name = "".join(chr(c) for c in range(33, 127) if chr(c) != ":")
        self.assertEqual(changing(name, "v").headers, ((name, "v"),))

    def test_value(self):
        for value in (1, True, [], {}, "a\rb", "a\nb", "a\r\n b", "a\x00b"):
            self.assertUnavailable(changing("X", value), "headers[0]: 'value'")
        answer = {"allow": True, "headers": [{"name": "X"}]}
        self.assertUnavailable(ok(answer), "headers[0]: 'value'")

    def test_from(self):
        for sender in (None, 1, "<a@b.c>", "a b@c.d", "a@b.c\r\nRCPT TO:<x@y.z>", "nobody"):
            self.assertUnavailable(ok({"allow": True, "from": sender}), "'from'")

    def test_reason(self):
        for reason in (None, 1, ["no"]):
            answer = {"allow": False, "reason": reason}
            self.assertUnavailable(ok(answer), "'reason' must be a str")

    def test_temporary(self):
        for temporary in (None, 1, "true"):
            answer = {"allow": False, "temporary": temporary}
            self.assertUnavailable(ok(answer), "'temporary' must be a bool")

    def test_checked_whatever_allow_says(self):
        """A malformed key makes the whole answer unusable, allow or refuse."""
        self.assertUnavailable(ok({"allow": True, "reason": 5}), "'reason'")
        answer = {"allow": False, "headers": [{"name": "X:", "value": ""}]}
        self.assertUnavailable(ok(answer), "headers[0]")
        self.assertUnavailable(ok({"allow": False, "from": "not an address"}), "'from'")


_ENTRIES = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True) | _TRICKY_TEXT,
        "value": st.none() | st.text() | _TRICKY_TEXT,
    }
)
_ANSWERS = st.fixed_dictionaries(
    {"allow": st.just(True) | _JSON, "headers": st.lists(_ENTRIES | _JSON, max_size=4) | _JSON},
    optional={"from": _TRICKY_TEXT | _JSON, "reason": _TRICKY_TEXT | _JSON, "temporary": _JSON},
)


class PropertyTests(SynchronousTestCase):
    def assertSafe(self, decision):
        """
        An allow's header changes cannot break the header block; anything
        else is one of the three refusals, on one line.
        """
        if decision.allowed:
            for name, value in decision.headers:
                self.assertRegex(name, r"\A[!-9;-~]+\Z")
                self.assertTrue(value is None or not any(c in value for c in "\r\n\x00"), value)
        else:
            self.assertIn((decision.reply.code, decision.reply.text[:6]), _REFUSALS)
            self.assertNotRegex(decision.reply.text, "[\x00-\x1f\x7f]")
            self.assertLessEqual(len(decision.reply.text), len("5.7.1 ") + 200)

    @given(st.integers(), st.binary())
    def test_any_bytes(self, status, body):
        """Nothing the API sends makes parsing raise; only 2xx can allow."""
        decision = parse_answer(status, body)
        self.assertSafe(decision)
        if not 200 <= status < 300:
            self.assertEqual(decision.reply, POLICY_UNAVAILABLE)

    @given(_ANSWERS | _JSON)
    def test_any_json(self, answer):
        self.assertSafe(ok(answer))

    @given(st.lists(_ENTRIES, max_size=4))
    def test_any_header_changes(self, headers):
        """Many of these are allowed, so the header rules meet hostile text."""
        self.assertSafe(ok({"allow": True, "headers": headers}))

    @given(_TRICKY_TEXT, st.booleans())
    def test_any_reason(self, reason, temporary):
        decision = ok({"allow": False, "reason": reason, "temporary": temporary})
        self.assertSafe(decision)
        self.assertEqual(decision.reply.code, 450 if temporary else 550)
