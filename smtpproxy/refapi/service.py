# -*- test-case-name: tests.test_refapi -*-
"""
The reference API as a twistd plugin:
C{twistd -n smtpproxy-refapi --policy=policy.toml [--listen=tcp:8025:interface=127.0.0.1]}.

The policy file is read before anything listens, so a broken file stops the
start with one line naming the defect, as does a port that cannot be opened; SIGHUP reads it again, and a broken
file then only logs that defect and keeps the policy in force.
"""

import signal

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from smtpproxy.endpoints import endpoint_description
from smtpproxy.refapi.policyfile import PolicyFileError, load
from smtpproxy.refapi.web import PolicyResource, PolicySite
from smtpproxy.startup import fail, listen

log = Logger(namespace="smtpproxy.refapi")


class Options(usage.Options):
    synopsis = "--policy=FILE [--listen=ADDR]"
    longdesc = (
        "The reference policy API for smtpproxy, answering from a TOML policy file "
        "(see README.rst). SIGHUP reloads the file."
    )

    optParameters = [
        ["listen", None, "tcp:8025:interface=127.0.0.1", "ip:port or endpoint to serve on."],
        ["policy", None, None, "Policy file, TOML (mandatory)."],
    ]

    def postOptions(self):
        if self["policy"] is None:
            fail("missing mandatory option --policy (see --help)")
        try:
            self["loaded"] = load(self["policy"])
        except PolicyFileError as e:
            fail(str(e))


class ReloadOnHangup(Service):
    """Reads the policy file again on SIGHUP while running."""

    def __init__(self, reactor, path, resource):
        self._reactor = reactor
        self._path = path
        self._resource = resource
        self._previous = None

    def startService(self):
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self):
        signal.signal(signal.SIGHUP, self._previous)
        return super().stopService()

    def _hangup(self, signum, frame):
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Use the file as it is now, or keep the old policy if it is broken."""
        try:
            policy = load(self._path)
        except PolicyFileError as e:
            log.error("policy file not reloaded, the old one stays in force: {error}", error=e)
            return
        self._resource.use(policy)
        log.info("policy file {path} reloaded: {count} users", path=self._path,
                 count=len(policy.users))


def makeService(options, reactor=None):
    """The API's listener and its SIGHUP reloader as one service."""
    if reactor is None:
        from twisted.internet import reactor
    resource = PolicyResource(reactor, options["loaded"])
    try:
        endpoint = serverFromString(reactor, endpoint_description(options["listen"]))
    except (ValueError, KeyError, IndexError) as e:
        fail(f"--listen={options['listen']}: not a usable address or endpoint ({e!r})")
    service = MultiService()
    ReloadOnHangup(reactor, options["policy"], resource).setServiceParent(service)
    site = PolicySite(resource, reactor=reactor)
    listen("listen", options["listen"], endpoint, site).setServiceParent(service)
    return service
