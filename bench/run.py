"""
smtpproxy beside nginx's mail proxy: the benchmark of issue 5.

    .venv/bin/python bench/run.py            # full: the README table (~8-15 min)
    .venv/bin/python bench/run.py --quick    # smoke run (~1-2 min)

It starts everything on 127.0.0.1 (smtp-sink, a small nginx as policy API
and auth_http responder, nginx-mail, smtpproxy), runs scenarios S1-S6 against
three targets - the sink directly (baseline), smtpproxy and nginx-mail -
and prints one table of medians over the repetitions, with ratios to nginx.

Fairness on a 2-core machine (the default): the proxy under test runs alone
on CPU 0; the load generator, the sink and the helper nginx share CPU 1.  Both proxies are single processes (nginx with one worker), so each
gets exactly one core and the same load side.  When the load side is the
bottleneck (its core near 100 %, the proxy's well below), the proxy's
messages/s is a lower bound: the table says so, and the CPU per message,
which does not depend on who is the bottleneck, is the fairer comparison.
``--no-pin`` lets the kernel spread everything instead.  Neither is neutral:
pinned, a streaming proxy (nginx) waits on a sink that shares the client's
core, and unpinned a cheap proxy leaves more CPU to the client.  Pinned is
the default because it gives each proxy the same single core.

Repetitions are interleaved - repetition 1 of every scenario and target,
then repetition 2, each time in a rotated target order - so drift (thermal,
neighbours, page cache) hits all targets alike.  Every measured run gets a
freshly started proxy and a short warm-up of the same shape first.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402

TARGETS = ("direct", "smtpproxy", "nginx")


def _ensure_venv():
    """The certificates come from the project: run under the project's venv."""
    try:
        import cryptography  # noqa: F401
        import smtpproxy  # noqa: F401
    except ImportError:
        python = os.path.join(servers.VENV, "python")
        if os.path.exists(python) and os.path.realpath(sys.executable) != os.path.realpath(python):
            env = dict(os.environ, PYTHONPATH=servers.ROOT)
            os.execve(python, [python, *sys.argv], env)
        raise


def parse(argv=None):
    p = argparse.ArgumentParser(
        description="smtpproxy vs nginx-mail benchmark (issue 5); see bench/README.rst"
    )
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are shown)")
    p.add_argument("--scenarios", default="S1,S2,S3,S4,S5,S6",
                   help="comma-separated subset, e.g. S1,S3")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated subset of direct,smtpproxy,nginx")
    p.add_argument("--procs", type=int, default=1,
                   help="load generator processes (they share the load core when pinned)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the proxy to CPU 0 and the load side to CPU 1")
    p.add_argument("--workers", type=int, default=1,
                   help="smtpproxy processes sharing one listening socket, as the instances "
                        "of contrib/smtpproxy@.service do (needs --no-pin)")
    p.add_argument("--proxy-option", action="append", default=[], metavar="--NAME=VALUE",
                   help="an extra smtpproxy option (repeatable), e.g. --proxy-option=--upstream_pool_idle=0")
    p.add_argument("--slow-ms", type=float, default=50.0, help="added API latency in S4")
    p.add_argument("--cert", choices=("ecdsa", "rsa"), default="ecdsa",
                   help="server certificate key type for both proxies")
    p.add_argument("--loglevel", default="info", help="smtpproxy --loglevel")
    p.add_argument("--deadline", type=float, default=120.0,
                   help="seconds per run after which no new session starts")
    p.add_argument("--py-spy", metavar="DIR",
                   help="record a py-spy profile (raw) of each smtpproxy run into DIR")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="seconds to wait, before each run, for other CPU load to stop")
    p.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p.parse_args(argv)


def _raise_fd_limit():
    """S5 holds 1000 sessions: each costs the client, proxy and nginx file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Bench:
    """The shared services and one method per measured run."""

    def __init__(self, args, workdir):
        import certs

        self.args = args
        self.workdir = workdir
        cores = os.cpu_count() or 1
        pin = args.pin and cores >= 2
        self.proxy_cpus = {0} if pin else None
        self.load_cpus = set(range(1, cores)) if pin else None
        self.certs = certs.make(os.path.join(workdir, "certs"), args.cert)
        self.sink = servers.Sink(workdir, cpus=self.load_cpus).start()
        self.helper = servers.Helper(workdir, self.sink.port, args.slow_ms,
                                     cpus=self.load_cpus).start()
        self.helper_worker = self.helper.worker

    def close(self):
        self.helper.stop()
        self.sink.stop()

    # One run.

    def target(self, name, scenario, rundir):
        if name == "direct":
            return servers.Direct(self.sink)
        common = dict(workdir=rundir, certs=self.certs, cpus=self.proxy_cpus)
        if name == "smtpproxy":
            return servers.SmtpProxy(api_url=self.helper.url("api", scenario.slow_api),
                                     sink_port=self.sink.port, loglevel=self.args.loglevel,
                                     workers=self.args.workers,
                                     options=self.args.proxy_option, **common)
        return servers.NginxMail(auth_url=self.helper.url("auth", scenario.slow_api), **common)

    def wait_quiet(self):
        """
        Wait (at most --quiet-wait seconds) until other work on the machine
        uses less than 15 % of a core: other people's test runs share the
        two cores, and a measurement started beside one is noise.
        """
        from procstat import machine_busy_ms

        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            busy = machine_busy_ms()
            time.sleep(0.5)
            if (machine_busy_ms() - busy) / 500 < 0.15 or time.monotonic() > deadline:
                return

    def run(self, name, scenario, rep):
        from procstat import Meter, MeterGroup, machine_busy_ms

        rundir = os.path.join(self.workdir, "runs", f"{rep}-{scenario.name}-{name}")
        os.makedirs(rundir, exist_ok=True)
        server = self.target(name, scenario, rundir).start()
        try:
            plain = name == "direct"
            warm = self._load(server.port, scenario.warmup, plain)
            self.wait_quiet()
            if warm["errors"]:
                print(f"  warm-up errors: {warm['errors']}", file=sys.stderr)
            spy = self._spy(server, scenario, rep) if name == "smtpproxy" else None
            meters = {"sink": Meter(self.sink.pid).start(),
                      "helper": Meter(self.helper_worker).start()}
            if server.pid is not None:
                pids = getattr(server, "pids", [server.pid])
                meters["proxy"] = (Meter(server.pid) if len(pids) == 1
                                   else MeterGroup(pids)).start()
            extra = {"machine_ms": -machine_busy_ms()}
            if scenario.idle:
                result = self._idle(server, scenario, plain, meters.get("proxy"), extra)
            else:
                result = self._load(server.port, scenario, plain)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            figures = {k: m.stop() for k, m in meters.items()}
            extra["machine_ms"] += machine_busy_ms()
        except Exception:
            print(server.log_tail() if hasattr(server, "log_tail") else "", file=sys.stderr)
            raise
        finally:
            server.stop()
        return _figures(name, scenario, rep, result, figures, extra)

    def _spy(self, server, scenario, rep):
        if not self.args.py_spy:
            return None
        os.makedirs(self.args.py_spy, exist_ok=True)
        spy = os.path.join(servers.VENV, "py-spy")
        out = os.path.join(self.args.py_spy, f"{scenario.name}-rep{rep}.txt")
        process = subprocess.Popen(
            [spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250",
             "--nonblocking", "-o", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, self.load_cpus)) if self.load_cpus else None,
        )
        time.sleep(1.0)  # let it attach before the load starts
        return process

    def _loadgen_argv(self, port, scenario, plain, count, concurrency):
        argv = [sys.executable, os.path.join(HERE, "loadgen.py"),
                "--port", str(port), "--count", str(count),
                "--concurrency", str(concurrency), "--size", str(scenario.size),
                "--recipients", str(scenario.recipients),
                "--per-connection", str(scenario.per_connection),
                "--deadline", str(self.args.deadline)]
        if plain:
            argv.append("--plain")
        else:
            argv += ["--ca", self.certs.ca_path]
        if scenario.idle:
            argv.append("--idle")
        return argv

    def _spawn_load(self, port, scenario, plain):
        """One or more loadgen processes, the count and concurrency split among them."""
        procs = max(1, min(self.args.procs, scenario.concurrency, scenario.count))
        children = []
        for i in range(procs):
            count = scenario.count // procs + (i < scenario.count % procs)
            conc = scenario.concurrency // procs + (i < scenario.concurrency % procs)
            argv = self._loadgen_argv(port, scenario, plain, count, conc)
            children.append(subprocess.Popen(
                argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, self.load_cpus))
                if self.load_cpus else None,
            ))
        return children

    def _collect(self, children):
        results = []
        for child in children:
            try:
                out, _ = child.communicate(timeout=self.args.deadline + 900)
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
            lines = [line for line in out.splitlines() if line.startswith("{")]
            results.append(json.loads(lines[-1]) if lines else
                           {"ok": 0, "errors": {"loadgen crashed": 1}, "latencies_ms": [],
                            "start": time.monotonic(), "end": time.monotonic(),
                            "cpu_ms": 0, "tls": None, "capped": False})
        return _merge(results)

    def _load(self, port, scenario, plain):
        return self._collect(self._spawn_load(port, scenario, plain))

    def _idle(self, server, scenario, plain, meter, extra):
        """S5: sessions held open; RSS read once all are up and settled."""
        from procstat import memory_kib

        children = self._spawn_load(server.port, scenario, plain)
        ready = 0
        for child in children:
            line = child.stdout.readline()
            ready += json.loads(line)["ready"] if line.startswith("{") else 0
        time.sleep(2.0)
        if meter is not None:
            rss, _ = memory_kib(server.pid)
            extra["held"] = ready
            extra["kib_per_session"] = (rss - meter.rss_before) / max(ready, 1)
        for child in children:
            child.stdin.write("\n")
            child.stdin.flush()
        return self._collect(children)


def _merge(results):
    merged = {
        "ok": sum(r["ok"] for r in results),
        "errors": {},
        "latencies_ms": sorted(x for r in results for x in r["latencies_ms"]),
        "start": min(r["start"] for r in results),
        "end": max(r["end"] for r in results),
        "cpu_ms": sum(r["cpu_ms"] for r in results),
        "tls": next((r["tls"] for r in results if r["tls"]), None),
        "capped": any(r["capped"] for r in results),
    }
    for r in results:
        for k, v in r["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
    return merged


def _percentile(values, q):
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _figures(name, scenario, rep, result, meters, extra):
    """Everything one run measured, as one flat dict (see report.py)."""
    wall = max(result["end"] - result["start"], 1e-9)
    ok = result["ok"]
    proxy = meters.get("proxy")
    load_cpu = result["cpu_ms"] + meters["sink"]["cpu_ms"] + meters["helper"]["cpu_ms"]
    # The client's CPU is over its own run; the sink's and helper's over the
    # meters' slightly longer window: each as a share of its own window.
    load_pct = (result["cpu_ms"] / wall
                + (meters["sink"]["cpu_ms"] + meters["helper"]["cpu_ms"]) / meters["sink"]["wall_s"]) / 10
    expected = scenario.count
    errors = dict(result["errors"])
    if not scenario.idle and ok + sum(errors.values()) < expected and not result["capped"]:
        errors["messages missing"] = expected - ok - sum(errors.values())
    row = {
        "target": name, "scenario": scenario.name, "rep": rep,
        "ok": ok, "expected": expected, "errors": errors, "capped": result["capped"],
        "wall_s": wall, "tls": result["tls"],
        "msg_s": None if scenario.idle else ok / wall,
        "mb_s": ok * scenario.size / wall / 1e6,
        "p50_ms": _percentile(result["latencies_ms"], 0.50),
        "p99_ms": _percentile(result["latencies_ms"], 0.99),
        "client_cpu_pct": result["cpu_ms"] / wall / 10,
        "load_cpu_pct": load_pct,
    }
    if proxy is not None:
        row.update({
            "proxy_cpu_pct": proxy["cpu_ms"] / proxy["wall_s"] / 10,
            "cpu_ms_per_msg": proxy["cpu_ms"] / max(ok, 1),
            "peak_kib": proxy["peak_kib"],
            "rss_before_kib": proxy["rss_before_kib"],
            "growth_kib": proxy["peak_kib"] - proxy["rss_before_kib"],
        })
        if "cpu_ms_each" in proxy:
            row["cpu_share_pct"] = [round(100 * each / max(proxy["cpu_ms"], 1e-9))
                                    for each in proxy["cpu_ms_each"]]
    machine = extra.pop("machine_ms")
    ours = load_cpu + (proxy["cpu_ms"] if proxy else 0)
    row["other_cpu_pct"] = max(machine - ours, 0) / meters["sink"]["wall_s"] / 10
    row.update(extra)
    return row


def _code_state():
    """
    Which smtpproxy was measured: the checkout's commit, and a hash of the
    uncommitted changes in smtpproxy/ if any (read-only git commands).
    """
    import hashlib

    git = ["git", "--no-optional-locks", "-C", servers.ROOT]
    try:
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        diff = subprocess.run(git + ["diff", "HEAD", "--", "smtpproxy"],
                              capture_output=True).stdout
    except OSError:
        return "unknown (no git)"
    if not diff:
        return head or "unknown"
    return f"{head} + uncommitted changes in smtpproxy/ (diff {hashlib.sha1(diff).hexdigest()[:8]})"


def _versions(code_at_start):
    code = _code_state()
    if code != code_at_start:
        code = f"{code_at_start} at the start, {code} at the end (changed during the run)"
    out = {"smtpproxy code": code}
    try:
        v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
        out["nginx"] = " ".join(line.split(":", 1)[-1].strip() for line in v.splitlines()
                                if line.startswith(("nginx version", "built with OpenSSL")))
    except OSError:
        pass
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        import twisted
        out["smtpproxy"] = (f"Python {sys.version.split()[0]}, Twisted {twisted.__version__}, "
                            f"{backend.openssl_version_text()} (cryptography's)")
    except Exception:
        pass
    import ssl
    out["client"] = f"Python asyncio, {ssl.OPENSSL_VERSION}"
    return out


def main(argv=None):
    args = parse(argv)
    _ensure_venv()
    # A plain "kill" must still stop every server through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import report
    from scenarios import scenarios

    _raise_fd_limit()
    servers.check_tools()
    only = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.workers > 1 and args.pin:
        print("--workers needs --no-pin: the processes share the cores", file=sys.stderr)
        return 2
    chosen = scenarios(args.quick, only)
    targets = [t for t in TARGETS if t in args.targets.split(",")]
    workdir = tempfile.mkdtemp(prefix="smtpproxy-bench-")
    code_at_start = _code_state()
    started = time.monotonic()
    rows = []
    bench = Bench(args, workdir)
    try:
        for rep in range(1, args.reps + 1):
            for scenario in chosen:
                order = targets[(rep - 1) % len(targets):] + targets[:(rep - 1) % len(targets)]
                for name in order:
                    if scenario.idle and name == "direct":
                        continue  # plain idle sessions on the sink tell nothing
                    row = bench.run(name, scenario, rep)
                    rows.append(row)
                    print(report.progress(row, time.monotonic() - started), file=sys.stderr,
                          flush=True)
    finally:
        bench.close()
    info = {
        "mode": "quick" if args.quick else "full",
        "reps": args.reps,
        "pinning": ("proxy on CPU 0; load generator, sink and helper on CPU "
                    f"{','.join(map(str, sorted(bench.load_cpus)))}"
                    if bench.load_cpus else "none (kernel scheduling)"),
        "procs": args.procs,
        "workers": args.workers,
        "cert": args.cert,
        "slow_ms": args.slow_ms,
        "loglevel": args.loglevel,
        "tls": next((r["tls"] for r in rows if r["tls"]), None),
        "versions": _versions(code_at_start),
        "minutes": (time.monotonic() - started) / 60,
    }
    print(report.table(rows, chosen, targets, info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "runs": rows}, f, indent=1)
    if args.keep:
        print(f"work directory kept: {workdir}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", workdir])
    return 0


if __name__ == "__main__":
    sys.exit(main())
