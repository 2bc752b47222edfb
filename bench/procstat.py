"""
What a server process costs, read from /proc.

The figures of issue 5 are per *process*: the proxy's CPU time per message
and its memory.  Both are read from the kernel's own accounting rather than
from tools such as ps, so they are exact, cheap enough to sample often, and
the same for a C server (nginx's worker) and a Python one (twistd).

- CPU: utime + stime of /proc/PID/stat (all threads of the process), in
  clock ticks, turned into milliseconds.
- Memory: VmRSS (now) and VmHWM (the peak) of /proc/PID/status.  Writing
  "5" to /proc/PID/clear_refs resets VmHWM to the current RSS, so a peak can
  be measured for one run without restarting the process.
"""

import os
import threading
import time

TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    """User + system CPU time the process has used so far, in milliseconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: split after its ")".
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def memory_kib(pid):
    """C{(VmRSS, VmHWM)} in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid):
    """
    Make VmHWM start again from the current RSS (Linux 4.0+).  Returns
    False where the kernel refuses; the sampler's peak is then the figure.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_busy_ms():
    """
    CPU time the whole machine has spent busy (all cores, all processes),
    from /proc/stat, in milliseconds.  Compared with the benchmark's own
    processes, it shows how much other work ran beside a measurement.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy * TICK_MS


def children(pid):
    """The pids of a process's children (to find nginx's worker)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


class Meter:
    """
    CPU and memory of one process over one measured run.

    VmHWM is reset at L{start} and read at L{stop}; a thread also samples
    VmRSS every 50 ms, as a cross-check and for kernels where the reset is
    not allowed.
    """

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        self.sampled_peak = 0

    def start(self):
        self._reset_ok = reset_peak(self.pid)
        self.rss_before, _ = memory_kib(self.pid)
        self.sampled_peak = self.rss_before
        self._cpu0 = cpu_ms(self.pid)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self._interval):
            try:
                rss, _ = memory_kib(self.pid)
            except (OSError, KeyError):
                return
            self.sampled_peak = max(self.sampled_peak, rss)

    def stop(self):
        """Return a dict: cpu_ms, wall_s, rss_before/after/peak (KiB)."""
        self._stop.set()
        self._thread.join()
        cpu = cpu_ms(self.pid) - self._cpu0
        wall = time.monotonic() - self._t0
        rss, hwm = memory_kib(self.pid)
        peak = max(hwm, self.sampled_peak) if self._reset_ok else self.sampled_peak
        return {
            "cpu_ms": cpu,
            "wall_s": wall,
            "rss_before_kib": self.rss_before,
            "rss_after_kib": rss,
            "peak_kib": max(peak, rss),
        }


class MeterGroup:
    """
    L{Meter} over several processes (C{--workers}): CPU and memory summed,
    and each process's CPU kept (C{cpu_ms_each}) to show how the load spread.
    """

    def __init__(self, pids, interval=0.05):
        self._meters = [Meter(pid, interval) for pid in pids]

    @property
    def rss_before(self):
        return sum(meter.rss_before for meter in self._meters)

    def start(self):
        for meter in self._meters:
            meter.start()
        return self

    def stop(self):
        figures = [meter.stop() for meter in self._meters]
        total = {key: sum(f[key] for f in figures)
                 for key in ("cpu_ms", "rss_before_kib", "rss_after_kib", "peak_kib")}
        total["wall_s"] = max(f["wall_s"] for f in figures)
        total["cpu_ms_each"] = [f["cpu_ms"] for f in figures]
        return total
