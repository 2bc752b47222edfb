# -*- test-case-name: tests.test_refapi -*-
"""
The reference API over twisted.web: POST a docs/protocol.rst section 3 request to any
path, get the docs/protocol.rst section 4 answer; POST a login check (C{--auth_api}: a
body with C{"mechanism"}) to any path, get C{{"allow": true}} or
C{{"allow": false, ...}}.  Both options may name the same URL.

Password checks run in the reactor's thread pool.  scrypt costs tens of
milliseconds of CPU by design and CPython's hashlib releases the GIL while
it runs, so the reactor keeps serving other requests meanwhile.  With the
login checked at AUTH, the same password comes again with every message
of that session, so a successful check is remembered for a few minutes
(L{smtpproxy.refapi.logincache}, which also says what that costs in
secrecy): a login and ten messages cost one scrypt, not eleven.  A wrong
password is never remembered, so each guess costs its full scrypt.  An
unknown user's password is checked against a decoy hash, so it costs the
same time as a wrong password.
"""

import json

from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smtpproxy.refapi.decision import (
    BadRequest,
    LoginRequest,
    RateLimiter,
    decide,
    parse_request,
)
from smtpproxy.refapi.logincache import LoginCache
from smtpproxy.refapi.passwords import decoy

log = Logger(namespace="smtpproxy.refapi")


class PolicyResource(Resource):
    """
    Answers every POST from the current L{smtpproxy.refapi.policyfile.PolicyFile}.

    @param reactor: runs the password checks in its thread pool and gives
        the time for the rate limits.
    @ivar policy: the policy in force.
    """

    isLeaf = True

    def __init__(self, reactor, policy):
        super().__init__()
        self._reactor = reactor
        self._limiter = RateLimiter()
        self._decoy = decoy()
        self._verified = LoginCache(reactor)
        self.use(policy)

    def use(self, policy) -> None:
        """
        Answer from C{policy} (a reloaded file) from now on; rate counts
        carry over, remembered logins do not (a password may have changed).
        """
        self.policy = policy
        self._limiter.retain(policy.users)
        self._verified.clear()

    def render_POST(self, request):
        try:
            asked = parse_request(request.content.read())
        except BadRequest as e:
            return _json(request, 400, {"error": str(e)})
        account = self.policy.users.get(asked.username)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)
        checked = self._check_password(account, asked)
        checked.addCallback(self._decide, account, asked)
        checked.addCallback(_log_answer, asked)
        checked.addErrback(_crashed)
        checked.addCallback(_send, request, finished)
        return NOT_DONE_YET

    def _check_password(self, account, asked):
        """A Deferred firing with whether the password is the account's."""
        if account is not None and self._verified.verified(asked.username, asked.password):
            return succeed(True)
        hashed = self._decoy if account is None else account.password
        checked = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), hashed.verify, asked.password
        )
        return checked.addCallback(self._remember, account, asked)

    def _remember(self, password_ok, account, asked):
        """Remember a match, unless a reload replaced the account during the check."""
        if password_ok and account is not None and account is self.policy.users.get(asked.username):
            self._verified.add(asked.username, asked.password)
        return password_ok

    def _decide(self, password_ok, account, asked):
        account = account if password_ok else None
        return decide(account, asked, self._limiter, self._reactor.seconds())


class PolicySite(Site):
    """A C{Site} for L{PolicyResource}: its one line per answer replaces the access log."""

    noisy = False

    def log(self, request):
        pass


def _log_answer(answer, asked):
    outcome = "allowed" if answer["allow"] else answer["reason"]
    if isinstance(asked, LoginRequest):
        log.info("{username!r} login: {outcome}", username=asked.username, outcome=outcome)
    else:
        log.info(
            "{username!r} from {sender!r} to {count} recipients: {outcome}",
            username=asked.username, sender=asked.sender, count=len(asked.recipients),
            outcome=outcome,
        )
    return 200, answer


def _crashed(failure):
    log.failure("policy check failed", failure)
    return 500, {"error": "internal error"}


def _send(result, request, finished):
    """Write the answer unless the client has gone (then there is no one to tell)."""
    if not finished.called:
        code, answer = result
        request.write(_json(request, code, answer))
        request.finish()


def _json(request, code, answer):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(answer).encode("utf-8")
