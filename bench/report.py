"""
The one table of issue 5, and the verdict on each target.

Every figure is the median over the repetitions of that (scenario, target)
pair; each ratio is smtpproxy's median over nginx-mail's from the same run.
The memory column means what the scenario is about: the peak RSS during
the run (S1-S4), RSS per idle session (S5), or the peak RSS growth over
the proxy's RSS before the message (S6).

A row is marked "load-bound" when the load side's core was nearly full
while the proxy's was not: the proxy could have done more, so its
messages/s is a lower bound.  The CPU-per-message ratio does not have that
problem, and is printed beside each throughput target as the capacity
ratio (nginx's CPU per message over smtpproxy's: what the messages/s ratio
would be with both proxies at a full core).
"""

import statistics

LABELS = {"direct": "sink direct", "smtpproxy": "smtpproxy", "nginx": "nginx-mail"}
LOAD_FULL = 90.0   # % of the load core: the load side is the bottleneck
PROXY_FULL = 85.0  # % of the proxy core: the proxy is the bottleneck


def _median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def _memory(scenario, row_median):
    kind = scenario.memory
    if kind == "per_session":
        v = row_median("kib_per_session")
        return v, (None if v is None else f"{v:.1f} KiB/sess")
    if kind == "growth":
        v = row_median("growth_kib")
        return v, (None if v is None else f"+{v / 1024:.1f} MiB")
    v = row_median("peak_kib")
    return v, (None if v is None else f"{v / 1024:.1f} MiB")


def progress(row, elapsed):
    """One line per run on stderr, so a long run shows it is alive."""
    errors = sum(row["errors"].values())
    parts = [f"[{elapsed / 60:5.1f} min] rep {row['rep']} {row['scenario']:<4}"
             f" {LABELS[row['target']]:<12}"]
    if row.get("msg_s") is not None:
        parts.append(f"{row['msg_s']:8.1f} msg/s p50 {_fmt(row['p50_ms'])} ms")
    if row.get("cpu_ms_per_msg") is not None and row.get("msg_s") is not None:
        parts.append(f"cpu {row['cpu_ms_per_msg']:.2f} ms/msg")
    if row.get("kib_per_session") is not None:
        parts.append(f"{row['held']} sessions, {row['kib_per_session']:.1f} KiB/sess")
    if row.get("growth_kib") is not None and row["scenario"].startswith("S6"):
        parts.append(f"peak +{row['growth_kib'] / 1024:.1f} MiB")
    parts.append(f"load core {row['load_cpu_pct']:.0f}%")
    if row.get("proxy_cpu_pct") is not None:
        parts.append(f"proxy core {row['proxy_cpu_pct']:.0f}%")
    if row.get("cpu_share_pct") is not None:
        parts.append("proxy CPU by process " + "/".join(f"{p}%" for p in row["cpu_share_pct"]))
    parts.append(f"other {row['other_cpu_pct']:.0f}%")
    if errors:
        parts.append(f"ERRORS {row['errors']}")
    return "  ".join(parts)


def table(rows, scenarios, targets, info):
    """The whole report as text: settings, the table, the targets."""
    cells = {}
    for s in scenarios:
        for t in targets:
            mine = [r for r in rows if r["scenario"] == s.name and r["target"] == t]
            if mine:
                cells[s.name, t] = mine

    def med(s, t, key):
        return _median(cells.get((s, t), []), key)

    header = ["scen", "what", "target", "msg/s", "xnginx", "MB/s", "p50 ms", "p99 ms",
              "CPU ms/msg", "xnginx", "memory", "xnginx", "errors", "load/proxy core %"]
    lines = []
    for s in scenarios:
        for t in targets:
            if (s.name, t) not in cells:
                continue
            runs = cells[s.name, t]
            msg_s = med(s.name, t, "msg_s")
            cpu = med(s.name, t, "cpu_ms_per_msg") if not s.idle else None
            mem, mem_text = _memory(s, lambda k: med(s.name, t, k))
            errors = sum(sum(r["errors"].values()) for r in runs)
            load, proxy = med(s.name, t, "load_cpu_pct"), med(s.name, t, "proxy_cpu_pct")
            cores = f"{_fmt(load, 0)}/{_fmt(proxy, 0)}"
            if load is not None and proxy is not None and load >= LOAD_FULL and proxy < PROXY_FULL:
                cores += " load-bound"
            if any(r["capped"] for r in runs):
                cores += " time-capped"
            ratios = ["", "", ""]
            if t == "smtpproxy":
                mem_n, _ = _memory(s, lambda k: med(s.name, "nginx", k))
                ratios = [
                    _fmt(_ratio(msg_s, med(s.name, "nginx", "msg_s")), 2),
                    _fmt(_ratio(cpu, med(s.name, "nginx", "cpu_ms_per_msg")), 2),
                    _fmt(_ratio(mem, mem_n), 2),
                ]
                ratios = [r if r != "-" else "" for r in ratios]
            lines.append([
                s.name, s.title, LABELS[t],
                _fmt(msg_s), ratios[0], _fmt(med(s.name, t, "mb_s")) if s.size > 100_000 else "",
                _fmt(med(s.name, t, "p50_ms")), _fmt(med(s.name, t, "p99_ms")),
                _fmt(cpu, 2), ratios[1], mem_text or "-", ratios[2],
                str(errors), cores,
            ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]

    def fmt_row(row):
        return "  ".join(str(x).ljust(w) if i < 3 or i == len(row) - 1 else str(x).rjust(w)
                         for i, (x, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("=" * w for w in widths)
    out = [
        f"smtpproxy benchmark ({info['mode']} mode, {info['reps']} interleaved repetitions, "
        f"medians; {info['minutes']:.1f} min)",
        f"pinning: {info['pinning']}; load generator processes: {info['procs']}; "
        f"smtpproxy processes: {info.get('workers', 1)}",
        f"TLS: {info['tls']}, {info['cert']} certificate; S4 decision latency "
        f"+{info['slow_ms']:.0f} ms for both proxies; smtpproxy --loglevel={info['loglevel']}",
    ]
    out += [f"{k}: {v}" for k, v in info["versions"].items()]
    others = [r["other_cpu_pct"] for r in rows]
    out.append(f"other work on the machine during the runs (not the benchmark's): median "
               f"{statistics.median(others):.0f}%, max {max(others):.0f}% of one core")
    out += ["", rule, fmt_row(header), rule]
    previous = None
    for row in lines:
        if previous is not None and row[0] != previous:
            out.append("")
        previous = row[0]
        out.append(fmt_row(row))
    out.append(rule)
    out.append("msg/s, latency (MAIL to the final reply) and errors are per target; CPU and "
               "memory are the proxy process's (nginx: its worker).")
    out.append("memory: S1-S4 peak RSS; S5 RSS per idle authenticated TLS session; "
               "S6 peak RSS growth.  load/proxy core %: CPU used on each core's side.")
    out += ["", "Targets (smtpproxy vs nginx-mail in this run):"]
    out += _targets(scenarios, med, cells)
    return "\n".join(out)


def _targets(scenarios, med, cells):
    names = {s.name for s in scenarios}
    out = []

    def verdict(ok):
        return "met" if ok else "NOT MET"

    def capacity(s):
        r = _ratio(med(s, "nginx", "cpu_ms_per_msg"), med(s, "smtpproxy", "cpu_ms_per_msg"))
        note = f"capacity ratio (nginx CPU/msg / smtpproxy CPU/msg) {_fmt(r, 2)}x"
        load, proxy = med(s, "nginx", "load_cpu_pct"), med(s, "nginx", "proxy_cpu_pct")
        if load is not None and proxy is not None and load >= LOAD_FULL and proxy < PROXY_FULL:
            note += f"; nginx load-bound (its core {proxy:.0f}%)"
        return note

    for s, limit, unit in (("S1", 1.5, "ms/msg"), ("S2", 0.6, "ms/msg"), ("S3", 4.0, "ms/MB")):
        if (s, "smtpproxy") in cells:
            v = med(s, "smtpproxy", "cpu_ms_per_msg")
            out.append(f"  {s} proxy CPU <= {limit} {unit}: {v:.2f}  {verdict(v <= limit)}")
    for s in ("S1", "S2", "S3"):
        if s in names and (s, "nginx") in cells and (s, "smtpproxy") in cells:
            r = _ratio(med(s, "smtpproxy", "msg_s"), med(s, "nginx", "msg_s"))
            goal = (f">= 0.35x nginx (unpinned runs): {r:.3f}x  {verdict(r >= 0.35)}"
                    if s == "S2" else f"vs nginx: {r:.3f}x")
            out.append(f"  {s} msg/s {goal}  [{capacity(s)}]")
    if {"S1", "S4"} <= names and ("S4", "smtpproxy") in cells and ("S1", "smtpproxy") in cells:
        r = _ratio(med("S4", "smtpproxy", "msg_s"), med("S1", "smtpproxy", "msg_s"))
        out.append(f"  S4 msg/s within 10 % of S1's: {r:.3f}x of S1  {verdict(r >= 0.9)}")
    if ("S5", "smtpproxy") in cells:
        v = med("S5", "smtpproxy", "kib_per_session")
        n = med("S5", "nginx", "kib_per_session")
        out.append(f"  S5 <= 32 KiB per idle TLS session: {v:.1f} KiB  {verdict(v <= 32)}"
                   f"  [nginx-mail {_fmt(n)} KiB]")
    for s in ("S6a", "S6b"):
        if (s, "smtpproxy") in cells:
            v = med(s, "smtpproxy", "growth_kib") / 1024
            title = next(x.title for x in scenarios if x.name == s)
            out.append(f"  {s} ({title}) peak RSS growth <= 16 MiB: {v:.1f} MiB  "
                       f"{verdict(v <= 16)}")
    errors = {}
    for (s, t), runs in cells.items():
        for r in runs:
            for k, v in r["errors"].items():
                errors[f"{s} {LABELS[t]}: {k}"] = errors.get(f"{s} {LABELS[t]}: {k}", 0) + v
    out.append(f"  no errors in any scenario: {verdict(not errors)}"
               + ("" if not errors else "  " + "; ".join(f"{k} x{v}" for k, v in errors.items())))
    return out
