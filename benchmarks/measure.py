"""Reading a process's CPU and memory from /proc, and the statistics the report uses.

No psutil: /proc has everything, and one dependency fewer keeps the harness
easy to run. CPU is utime+stime of the whole process (all threads) in
clock ticks, so a measured span must be long (the harness uses thousands of
calls) for the 10 ms tick to be noise.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence

_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """CPU time one thread has used so far, in nanoseconds' resolution (schedstat's first field)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread, by thread ID (nanosecond resolution)."""
    times = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            times[int(name)] = thread_cpu_seconds(pid, int(name))
        except OSError:
            pass  # ended while we looked
    return times


def cpu_since(pid: int, before: dict[int, float]) -> float:
    """CPU seconds the live threads used since ``before`` (threads started since count in full)."""
    return sum(now - before.get(tid, 0.0) for tid, now in thread_times(pid).items())


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, all threads (ended ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name may contain spaces; the fields after it are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


def status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict (VmRSS, VmHWM, Threads, ...)."""
    result: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def _kib(value: str) -> int:
    return int(value.split()[0])


def rss_mib(pid: int) -> float:
    return _kib(status(pid)["VmRSS"]) / 1024


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    return _kib(status(pid)["VmHWM"]) / 1024


def threads(pid: int) -> int:
    return int(status(pid)["Threads"])


def uss_mib(pid: int) -> float:
    """Memory only this process has: Private_Clean + Private_Dirty from smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += _kib(line.split(":", 1)[1])
    return total / 1024


def machine_seconds() -> tuple[float, float]:
    """CPU seconds since boot: used by all processes on the machine, and stolen by the hypervisor."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
