# -*- test-case-name: tests.test_health -*-
"""
The pages of the C{--metrics} listener: C{/metrics} (L{smtpproxy.metrics}),
C{/healthz} and C{/readyz} (L{smtpproxy.health}).  Each is a L{Page} whose
status and body one function gives, under a root that answers 404 for
everything else.
"""

from twisted.web.pages import notFound
from twisted.web.resource import Resource

TEXT = b"text/plain; charset=utf-8"


class Page(Resource):
    """
    A leaf page answering GET with C{render()}'s C{(status, body)}.

    @param content_type: the C{Content-Type} header's value.
    @param render: called for each request.
    """

    isLeaf = True

    def __init__(self, content_type, render):
        super().__init__()
        self._content_type = content_type
        self._render = render

    def render_GET(self, request):
        status, body = self._render()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", self._content_type)
        return body


class Root(Resource):
    """The site's root: only the pages put under it are found."""

    def getChild(self, path, request):
        return notFound()
