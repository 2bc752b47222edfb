"""
twistd's entry point: C{twistd -n smtpproxy --listen ...}.

Kept tiny with lazy imports: a plugin module that fails to import is
silently missing from C{twistd --help}.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _ServiceMaker:
    tapname = "smtpproxy"
    description = "SMTP submission proxy that asks a policy API before relaying."

    @property
    def options(self):
        from smtpproxy.options import Options

        return Options

    def makeService(self, options):
        from smtpproxy.tap import makeService

        return makeService(options)


serviceMaker = _ServiceMaker()
