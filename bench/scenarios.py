"""
The scenarios of issue 5, each with a full size (for the README table) and
a quick size (a smoke run that finishes in about two minutes).

Counts are chosen so that one run of the slowest target lasts some seconds:
long enough that start-up and the last stragglers do not dominate, short
enough that the full benchmark (3 repetitions of everything) fits in about
15 minutes on the 2-core machine.
"""

from dataclasses import dataclass, replace

KB = 1000
MB = 1000 * 1000
GIB = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    count: int              # messages (S5: sessions held)
    concurrency: int
    size: int = 2 * KB      # bytes per message
    recipients: int = 1
    per_connection: int = 1
    slow_api: bool = False  # the decision (API / auth_http) answers after --slow-ms
    idle: bool = False      # S5: hold authenticated sessions, send nothing
    memory: str = "peak"    # what the memory column shows: peak, per_session, growth

    @property
    def warmup(self):
        """A short run of the same shape (small messages for S6) before measuring."""
        size = self.size if self.size <= MB else 2 * KB
        count = max(self.concurrency, min(self.count // 10, 200))
        if self.idle:
            count = self.concurrency
        return replace(self, count=count, size=size, idle=False,
                       per_connection=min(self.per_connection, count))


FULL = [
    Scenario("S1", "2 KB, 1 rcpt, 1 msg/conn, 50 conc", 3000, 50),
    Scenario("S2", "2 KB, 10 msgs/conn, 50 conc", 10000, 50, per_connection=10),
    Scenario("S3", "1 MB, 10 conc", 400, 10, size=MB),
    Scenario("S4", "as S1, 200 conc, API +50 ms", 3000, 200, slow_api=True),
    Scenario("S5", "1000 idle TLS sessions", 1000, 50, idle=True, memory="per_session"),
    Scenario("S6a", "one 50 MB message", 1, 1, size=50 * MB, memory="growth"),
    Scenario("S6b", "one 1 GiB message", 1, 1, size=GIB, memory="growth"),
]

QUICK_COUNTS = {"S1": 300, "S2": 1000, "S3": 40, "S4": 400, "S5": 200}
QUICK_SIZES = {"S6b": 256 * 1024 * 1024}


def scenarios(quick=False, only=None):
    chosen = []
    for s in FULL:
        if only and s.name not in only and s.name.rstrip("ab") not in only:
            continue
        if quick:
            s = replace(s, count=QUICK_COUNTS.get(s.name, s.count),
                        size=QUICK_SIZES.get(s.name, s.size))
            if s.name == "S5":
                s = replace(s, title=f"{s.count} idle TLS sessions")
            if s.name == "S6b":
                s = replace(s, title="one 256 MiB message (quick)")
        chosen.append(s)
    return chosen
