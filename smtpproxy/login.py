# -*- test-case-name: tests.test_login -*-
"""
Pure: the login check at AUTH (C{--auth_api}): its request and the
validation of its answer.

Without the check the proxy accepts every well-formed AUTH and the policy
API judges the password with each message, so a wrong password is only
refused after DATA: a relay then bounces the mail it was asked to send,
and a mail client never learns that it should ask for the password again.
With the check the API judges the login when it is made, and the reply is
the one RFC 4954 gives each case:

  - C{{"allow": true}}: C{235 2.7.0};
  - C{{"allow": false}}: C{535 5.7.8}, and the client may try again;
  - C{{"allow": false, "temporary": true}}, and any answer that is not
    exactly one of these (a non-2xx status, no JSON object, a missing or
    mistyped key), as well as a timeout or an unreachable API:
    C{454 4.7.0}, so nobody is told a password is wrong when it was never
    checked.

As in the message answer, C{temporary} qualifies a refusal only, and
unknown keys are ignored, so one API may answer both calls alike.
"""

from attrs import frozen

from smtpproxy import replies
from smtpproxy.answer import Malformed, field, json_object
from smtpproxy.replies import Reply


def build_login_request(login, mechanism: str, client_address: str, helo: str) -> dict:
    """
    The JSON object POSTed to C{--auth_api}.

    @param login: the client's L{smtpproxy.auth.Login}.
    @param mechanism: C{"PLAIN"} or C{"LOGIN"}.
    """
    return {
        "username": login.username,
        "password": login.password,
        "mechanism": mechanism,
        "client_address": client_address,
        "helo": helo,
    }


@frozen
class LoginVerdict:
    """
    What the login API decided, as the reply to the AUTH command.

    @ivar cause: why the API counts as unavailable, for the log only.
    """

    reply: Reply
    cause: str | None = None

    @classmethod
    def unavailable(cls, cause: str) -> "LoginVerdict":
        """The 454 verdict for an API that did not answer usably."""
        return cls(replies.AUTH_TEMPORARY_FAILURE, cause)


def parse_login_answer(status: int, body: bytes) -> LoginVerdict:
    """
    Turn the login API's HTTP status and body into a L{LoginVerdict}.
    Never raises: every defect becomes L{LoginVerdict.unavailable}.
    """
    try:
        answer = json_object(status, body)
        allow = field(answer, "allow", bool)
        temporary = field(answer, "temporary", bool, False)
    except Malformed as e:
        return LoginVerdict.unavailable(str(e))
    if allow:
        return LoginVerdict(replies.AUTH_OK)
    if temporary:
        return LoginVerdict(replies.AUTH_TEMPORARY_FAILURE)
    return LoginVerdict(replies.AUTH_INVALID)
