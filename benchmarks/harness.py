"""The benchmark run: rounds over the three plugins, the static costs, and the report text.

Kept apart from ``run.py`` so that a missing requirement is reported
clearly before any of this (which imports grpcio and sdplite) is loaded.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass

import footprint
import measure
import report
import scenarios
from report import Results
from session import IMPLS, Session


@dataclass(frozen=True)
class Config:
    rounds: int
    starts_per_round: int
    calls: int
    #: Allocate calls are made in this many chunks, alternating between the plugins.
    chunks: int
    warmup: int
    throughput_calls: int
    law_changes: int
    restarts: int  # per implementation, over all rounds
    small_list: int
    big_list: int
    idle_settle: float
    import_runs: int


FULL = Config(
    rounds=5,
    starts_per_round=3,
    calls=5000,
    chunks=5,
    warmup=200,
    throughput_calls=6000,
    law_changes=200,
    restarts=20,
    small_list=10_000,
    big_list=70_000,
    idle_settle=12.0,
    import_runs=9,
)
QUICK = Config(
    rounds=1,
    starts_per_round=1,
    calls=200,
    chunks=2,
    warmup=20,
    throughput_calls=400,
    law_changes=20,
    restarts=2,
    small_list=1_000,
    big_list=5_000,
    idle_settle=1.0,
    import_runs=2,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()} ({sys.executable})"
    )


def sdplite_version() -> str:
    """Which sdplite was measured: version and where it was imported from."""
    import sdplite

    return f"{sdplite.__version__} from {os.path.dirname(os.path.dirname(sdplite.__file__ or '?'))}"


def _share(total: int, rounds: int, index: int) -> int:
    """Round ``index``'s share of ``total`` items spread over ``rounds``."""
    return total // rounds + (1 if index < total % rounds else 0)


def run_round(index: int, config: Config, poll: float, results: Results) -> None:
    """One round: every figure once for each plugin, in this round's order of the three."""
    order = IMPLS[index % 3 :] + IMPLS[: index % 3]
    log(f"round {index + 1}/{config.rounds}, order {', '.join(order)}")
    for impl in order:
        for _ in range(config.starts_per_round):
            results.add("start_register_ms", impl, scenarios.start_to_register(impl, poll))
    sessions: dict[str, Session] = {}
    try:
        for impl in order:
            sessions[impl] = Session(impl, poll=poll)
        idle_phase(sessions, config, results)
        allocate_phase(sessions, config, results)
        for impl in order:
            log(f"  ListAndWatch updates x{config.law_changes}: {impl}")
            latencies = scenarios.list_updates(sessions[impl], config.law_changes)
            results.add("law_p50_ms", impl, measure.percentile(latencies, 0.5))
            results.add("law_p99_ms", impl, measure.percentile(latencies, 0.99))
        restarts = _share(config.restarts, config.rounds, index)
        for impl in order:
            log(f"  kubelet restarts x{restarts}: {impl}")
            results.add("rereg_s", impl, *scenarios.reregistration(sessions[impl], restarts))
    finally:
        for session in sessions.values():
            session.close()
    for size, key in ((config.small_list, "list_small"), (config.big_list, "list_big")):
        for impl in order:
            log(f"  first ListAndWatch of {size} devices: {impl}")
            for name, value in scenarios.big_list(impl, size, poll).items():
                results.add(f"{key}_{name}", impl, value)


def idle_phase(sessions: dict[str, Session], config: Config, results: Results) -> None:
    """Register all three, let them idle together, then read memory, threads and idle CPU.

    They idle at the same time (an idle plugin costs the others nothing), so
    the settle time, longer than sdplite's 10 s worker idle timeout, is paid
    once per round.
    """
    ready: dict[str, tuple[dict[int, float], float]] = {}
    for impl, session in sessions.items():
        session.wait_ready()
        pid = session.plugin.pid
        results.add("ready_threads", impl, measure.threads(pid) - 1)
        ready[impl] = (measure.thread_times(pid), time.monotonic())
    settle = max(t for _, t in ready.values()) + config.idle_settle - time.monotonic()
    log(f"  idle: letting the plugins settle for {max(settle, 0):.0f}s")
    time.sleep(max(settle, 0.0))
    for impl, session in sessions.items():
        for key, value in scenarios.idle(session, *ready[impl]).items():
            results.add(key, impl, value)


def allocate_phase(sessions: dict[str, Session], config: Config, results: Results) -> None:
    """Sequential Allocate for both shapes, then 4-thread throughput.

    The calls go in ``config.chunks`` chunks, alternating between the
    plugins, so a burst of load from elsewhere on the machine lands on all
    three rather than on whichever was being measured.
    """
    order = list(sessions)
    first = sessions[order[0]].first
    assert first is not None and first.ids is not None
    per_chunk = config.calls // config.chunks
    for shape, (containers, per_container) in scenarios.SHAPES.items():
        request = scenarios.allocate_request(first.ids, containers, per_container)
        log(f"  Allocate {shape} x{config.calls}, in {config.chunks} interleaved chunks")
        cpu = dict.fromkeys(order, 0.0)
        latencies: dict[str, list[float]] = {impl: [] for impl in order}
        responses: dict[str, bytes] = {}
        for chunk in range(config.chunks):
            warmup = config.warmup if chunk == 0 else 0
            for impl in order:
                used, times, responses[impl] = scenarios.allocate_sequential(
                    sessions[impl], request, per_chunk, warmup
                )
                cpu[impl] += used
                latencies[impl] += times
        for impl in order:
            scenarios.check_allocation(responses[impl], containers, per_container)
            results.add(f"alloc_{shape}_cpu_us", impl, cpu[impl] / len(latencies[impl]) * 1e6)
            results.add(f"alloc_{shape}_p50_ms", impl, measure.percentile(latencies[impl], 0.5) * 1e3)
            results.add(f"alloc_{shape}_p99_ms", impl, measure.percentile(latencies[impl], 0.99) * 1e3)
        if len(set(responses.values())) != 1:
            results.notes.append(f"Allocate {shape}: the three plugins' responses differ byte-wise")

    request = scenarios.allocate_request(first.ids, 1, 1)
    log(f"  Allocate 1x1 x{config.throughput_calls} from 4 threads, in {config.chunks} interleaved chunks")
    wall = dict.fromkeys(order, 0.0)
    cpu = dict.fromkeys(order, 0.0)
    calls = dict.fromkeys(order, 0)
    for _ in range(config.chunks):
        for impl in order:
            elapsed, used, done = scenarios.allocate_throughput(
                sessions[impl], request, config.throughput_calls // config.chunks
            )
            wall[impl] += elapsed
            cpu[impl] += used
            calls[impl] += done
    for impl in order:
        results.add("tput_calls_per_s", impl, calls[impl] / wall[impl])
        results.add("tput_cpu_us", impl, cpu[impl] / calls[impl] * 1e6)


def static_costs(config: Config, results: Results) -> list[str]:
    log(f"import times x{config.import_runs} and installed sizes")
    for impl in IMPLS:
        footprint.import_seconds(impl)  # once untimed: byte-code compiled, files in the page cache
    for run in range(config.import_runs):
        for impl in IMPLS[run % 3 :] + IMPLS[: run % 3]:
            results.add("import_ms", impl, footprint.import_seconds(impl) * 1e3)
    lines = []
    for impl in IMPLS:
        size, names = footprint.installed(impl)
        results.add("installed_mib", impl, size)
        lines.append(f"{impl}: {', '.join(names)}")
    return lines


def run(quick: bool, rounds: int | None, poll: float) -> str:
    """Run everything and return the report (machine line, table, notes)."""
    config = QUICK if quick else FULL
    if rounds:
        config = Config(**{**config.__dict__, "rounds": rounds})
    results = Results()
    started = time.monotonic()
    (busy_before, steal_before), own_before = measure.machine_seconds(), measure.own_cpu_seconds()
    log(f"{'quick' if quick else 'full'} run on {machine()}")
    for impl in IMPLS:  # warm-up: byte-code and page cache, not recorded
        scenarios.start_to_register(impl, poll)
    for index in range(config.rounds):
        run_round(index, config, poll, results)
    stacks = static_costs(config, results)
    elapsed = time.monotonic() - started
    busy, steal = measure.machine_seconds()
    capacity = elapsed * (os.cpu_count() or 1) / 100
    others = max((busy - busy_before) - (measure.own_cpu_seconds() - own_before), 0.0) / capacity
    stolen = (steal - steal_before) / capacity

    rows = report.figures(config.small_list, config.big_list)
    missed = [row.label for row in rows if report.verdict(results, row) is False]
    lines = [
        f"Machine: {machine()}",
        f"Run: {'quick' if quick else 'full'}, {config.rounds} rounds, {elapsed:.0f} s; "
        f"Allocate x{config.calls} per shape per round; throughput x{config.throughput_calls} per round; "
        f"LAW updates x{config.law_changes} per round; restarts x{config.restarts} in all; "
        f"grpcio/grpclib restart poll {poll:g} s; sdplite {sdplite_version()}",
        f"Other processes used {others:.0f}% of the machine's CPU during the run (/proc/stat minus this "
        f"run's own processes), the hypervisor stole {stolen:.0f}%: more than a few % makes figures noisy.",
        "",
        report.table(results, rows),
        "",
        "Run-time distributions counted:",
        *(f"  {line}" for line in stacks),
        *(f"NOTE: {note}" for note in results.notes),
        f"Targets missed: {len(missed)}" + (f" ({'; '.join(missed)})" if missed else ""),
    ]
    return "\n".join(lines)
