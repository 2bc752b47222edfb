"""
The reference API's test material: a policy file with two users whose
password hashes are cheap to check, and a reactor whose thread pool runs
its work only when the test says, so the resource's threaded password
checks can be stepped through without threads.
"""

import tomllib

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from smtpproxy.refapi.passwords import make_hash
from smtpproxy.refapi.policyfile import parse

PASSWORD = "correct horse"


def cheap_hash(password=PASSWORD):
    """A valid line at a cost fit for tests (the format carries the cost)."""
    return make_hash(password, n=16, r=1).line()


POLICY = f"""
[defaults]
recipient_domains = ["example.net", "Example.ORG"]
rate = "2/minute"
remove_headers = ["X-Originating-IP"]

[users.alice]
password = "{cheap_hash()}"
senders = ["alice@Example.COM", "@Example.org"]
add_headers = {{ X-Account = "alice" }}

[users.bob]
password = "{cheap_hash()}"
senders = ["bob@example.com", "<>"]
recipient_domains = ["*"]
rate = "unlimited"
remove_headers = []
"""


def policy(text=POLICY):
    return parse(tomllib.loads(text))


class FakeThreadsReactor(Clock):
    """A Clock whose thread pool runs its work only when the test calls L{work}."""

    def __init__(self):
        super().__init__()
        self.queued = []

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.queued.append((onResult, f, args, kwargs))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def work(self):
        queued, self.queued = self.queued, []
        for onResult, f, args, kwargs in queued:
            try:
                result = f(*args, **kwargs)
            except Exception:
                onResult(False, Failure())
            else:
                onResult(True, result)
