"""
Summarise py-spy's raw profiles (``run.py --py-spy DIR``) as two top lists.

    .venv/bin/python bench/hotspots.py DIR/S1-rep1.txt [--top 25]

py-spy's ``--format raw`` writes one line per distinct stack, frames
outermost first, separated by ";", then a space and the sample count.  This
prints the functions where the samples *are* (self time: what to make
cheaper) and the functions the samples are *under* (inclusive time: which
feature of the proxy costs what), with line numbers dropped so one function
is one entry.  py-spy leaves idle samples out unless it is given --idle;
any idle sample found here is counted apart, so the percentages are of the
time the proxy was busy.

``--by-feature`` instead puts every sample under one feature of the proxy
(TLS handshake, API request, upstream SMTP client, DATA framing...): the
first matching entry of L{FEATURES}, most specific first.
"""

import argparse
import collections
import re

_LINE = re.compile(r":\d+\)$")
IDLE = ("doPoll (twisted/internet/epollreactor.py", "poll (")


def _frame(frame):
    """'func (path/file.py:123)' -> 'func (file.py)', shortened path."""
    frame = _LINE.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({short})"


def load(path):
    """C{(stacks, idle)}: a list of (frames, count) for busy samples; idle count."""
    stacks, idle = [], 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not frames[0].startswith(("MainThread", "<module>")) and "process" in frames[0]:
                frames = frames[1:]  # a "process NNN" prefix from --subprocesses
            count = int(count)
            if any(frames[-1].startswith(i) for i in IDLE):
                idle += count
                continue
            stacks.append(([_frame(f) for f in frames], count))
    return stacks, idle


def summary(path, top=25):
    stacks, idle = load(path)
    busy = sum(c for _, c in stacks) or 1
    own = collections.Counter()
    under = collections.Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    lines = [f"{path}: {busy} busy samples, {idle} idle "
             f"({100 * busy / (busy + idle):.0f}% busy)", "", "self time (top):"]
    lines += [f"  {100 * c / busy:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time (top, smtpproxy and Twisted protocol code):"]
    shown = 0
    for frame, count in under.most_common():
        if any(s in frame for s in ("smtpproxy/", "mail/", "protocols/", "web/", "internet/",
                                    "OpenSSL/", "treq/", "json/", "tempfile")):
            if "runReactor" in frame or "mainLoop" in frame or "run (" in frame:
                continue
            lines.append(f"  {100 * count / busy:5.1f}%  {frame}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(lines)


FEATURES = [
    ("Message._finished", "message: final log line, spool close"),
    ("Message._ask", "API: build and send the request"),
    ("PolicyClient._answered", "API: read the answer"),
    ("_AnswerReader", "API: read the answer"),
    ("HTTP11ClientProtocol", "API: HTTP protocol"),
    ("_newclient", "API: HTTP protocol"),
    ("HTTPConnectionPool", "API: connection pool"),
    ("RelaySender", "upstream: SMTP client"),
    ("KeptConnection", "upstream: SMTP client"),
    ("Pool.", "upstream: SMTP client"),
    ("SMTPClient", "upstream: SMTP client"),
    ("FileSender", "upstream: sending the data"),
    ("upstream.py", "upstream: connect, reply"),
    ("relay.py", "upstream: SMTP client"),
    ("do_handshake", "client: TLS handshake"),
    ("ProxySession._command", "client: commands"),
    ("Framer", "client: DATA framing"),
    ("Message.dataReceived", "client: headers, spool"),
    ("ProxySession", "client: session, other"),
    ("InputFlow", "client: session, other"),
    ("MailCommands", "client: session, other"),
    ("AuthExchange", "client: session, other"),
    ("Transcript.", "client: session, other"),
    ("connectionLost", "connection teardown"),
    ("doConnect", "TCP connect"),
    ("connectTCP", "TCP connect"),
    ("doAccept", "TCP accept"),
    ("_threadworker", "worker threads (mostly waiting)"),
    ("TLSMemoryBIOProtocol", "TLS record layer"),
    ("writeSomeData", "socket send"),
    ("doRead", "socket receive"),
    ("runUntilCurrent", "timers"),
    ("doPoll", "reactor (epoll)"),
]


def by_feature(path):
    counts = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            total += int(count)
            feature = next((name for key, name in FEATURES if key in stack), "other")
            counts[feature] += int(count)
    lines = [f"{path}: {total} samples by feature"]
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {f}" for f, c in counts.most_common()]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profiles", nargs="+")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by-feature", action="store_true", help="one line per proxy feature")
    args = p.parse_args(argv)
    for path in args.profiles:
        print(by_feature(path) if args.by_feature else summary(path, args.top))
        print()


if __name__ == "__main__":
    main()
