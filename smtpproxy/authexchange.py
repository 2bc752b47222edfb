# -*- test-case-name: tests.test_login -*-
"""
The AUTH exchange of a session (docs/protocol.rst section 1): PLAIN or
LOGIN, parsed by L{smtpproxy.auth}, one challenge line at a time.

Without C{--auth_api} the login is only recorded (235 at once) and the
policy API judges the password with each message; with it the login API
judges it now, and the session holds its input until the verdict
(L{smtpproxy.flow.InputFlow._await}), so a command pipelined behind AUTH is
answered only after it.
"""

from smtpproxy import auth, replies
from smtpproxy.transcript import text


class AuthExchange:
    """
    The AUTH side of L{smtpproxy.session.ProxySession} (a mixin).  Its
    state: C{_auth}, the exchange under way (or C{None}), and C{_login},
    the accepted L{smtpproxy.auth.Login} (or C{None}).
    """

    def smtp_AUTH(self, argument):
        if self._login is not None:
            self.reply(replies.ALREADY_AUTHENTICATED)
        elif self._transaction is not None:
            self.reply(replies.BAD_SEQUENCE)
        else:
            try:
                self._auth, step = auth.start(argument)
            except auth.AuthError as e:
                self.reply(e.reply)
            else:
                self._auth_step(step)

    def _auth_response(self, line):
        try:
            step = self._auth.respond(line)
        except auth.AuthError as e:
            self._auth = None
            self.reply(e.reply)
        else:
            self._auth_step(step)

    def _auth_step(self, step):
        """
        Ask for more, or take the login: checked now by the login API when
        there is one, else recorded for the policy API to judge later.
        """
        if isinstance(step, auth.Challenge):
            self.sendCode(334, step.prompt)
            return
        mechanism, self._auth = self._auth.mechanism, None
        if self.factory.config.policy.auth_url is None:
            self._login = step.login
            self.reply(replies.AUTH_OK)
            return
        helo = text(self.helo_name or b"")
        checked = self.factory.authenticate(step.login, mechanism, self.client, helo)
        self._await(checked.addCallback(self._authenticated, step.login))

    def _authenticated(self, reply, login):
        if reply == replies.AUTH_OK:
            self._login = login
        return reply
