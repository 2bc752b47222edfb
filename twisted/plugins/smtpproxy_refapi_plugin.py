"""
twistd's entry point for the reference policy API:
C{twistd -n smtpproxy-refapi --policy=policy.toml}.

Twisted's own L{ServiceMaker} imports C{smtpproxy.refapi} (its C{Options}
and C{makeService}) only when the plugin is used: a plugin module that fails
to import is silently missing from C{twistd --help}.
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "smtpproxy-refapi",
    "smtpproxy.refapi",
    "Reference policy API for smtpproxy, answering from a TOML policy file.",
    "smtpproxy-refapi",
)
