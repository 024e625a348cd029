"""Old sdplite against new, alternating in one run: is any figure worse beyond the noise?

    git archive <old-commit> sdplite | tar -x -C /tmp/old
    git archive <new-commit> sdplite | tar -x -C /tmp/new
    python benchmarks/ab.py --old /tmp/old --new /tmp/new [--rounds 6] [--calls 2000]

Each round starts the benchmark's sdplite plugin (plugins/sdplite_plugin.py)
once with each snapshot on ``PYTHONPATH``, the order alternating from round
to round, and measures what a structural change must not slow down: Allocate
latency and the plugin's CPU per call (1x1 and 8x8 requests), Allocate
throughput from four client threads on the kubelet's one connection, the
ListAndWatch push (health change to the kubelet holding the new list), and
the CPU of one unary round trip with sdplite at both ends in one process. The
report gives, per figure, the median of each side, the change, the
run-to-run noise (the largest spread, max - min, of one side's rounds, as a
percentage of its median), and the new/old ratio paired by round (median and
middle half), which cancels most of the drift between rounds. A change is
flagged only when it is worse by more than the noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import measure
import scenarios
from session import Session, child_env

#: figure -> (unit, True if higher is better)
FIGURES = {
    "Allocate 1x1 p50": ("us", False),
    "Allocate 1x1 plugin CPU/call": ("us", False),
    "Allocate 8x8 p50": ("us", False),
    "Allocate 8x8 plugin CPU/call": ("us", False),
    "Allocate throughput, 4 threads": ("calls/s", True),
    "ListAndWatch push p50": ("us", False),
    "in-process unary round trip CPU": ("us", False),
}

#: One process, sdplite's Channel calling sdplite's Server (an echo): CPU per call of the whole
#: wire, both ends, threads included. Public API only, so old and new run the same script.
_ROUND_TRIP = """
import os, sys, tempfile, time
from google.protobuf.wrappers_pb2 import BytesValue
from sdplite.wire import Channel, Server, unary
path = os.path.join(tempfile.mkdtemp(), "rt.sock")
calls = int(sys.argv[1])
with Server(path, [unary("/t.E/E", lambda r, c: r, BytesValue)]):
    with Channel(path) as channel:
        request = BytesValue(value=b"x" * 64)
        for _ in range(200):
            channel.unary("/t.E/E", request, BytesValue)
        started = time.process_time()
        for _ in range(calls):
            channel.unary("/t.E/E", request, BytesValue)
        print((time.process_time() - started) / calls * 1e6)
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def imported_from(snapshot: str) -> str:
    """Where a plugin started with ``snapshot`` on PYTHONPATH imports sdplite from."""
    env = dict(child_env(), PYTHONPATH=snapshot)
    code = "import os, sdplite; print(os.path.dirname(sdplite.__file__))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip()


def one_round(calls: int, changes: int) -> dict[str, float]:
    """Every figure, once, from a fresh plugin (sdplite from whatever PYTHONPATH says)."""
    out: dict[str, float] = {}
    with Session("sdplite") as session:
        first = session.wait_ready()
        assert first.ids is not None
        for shape, (containers, per) in scenarios.SHAPES.items():
            request = scenarios.allocate_request(first.ids, containers, per)
            cpu, latencies, response = scenarios.allocate_sequential(session, request, calls, warmup=200)
            scenarios.check_allocation(response, containers, per)
            out[f"Allocate {shape} p50"] = measure.percentile(latencies, 0.5) * 1e6
            out[f"Allocate {shape} plugin CPU/call"] = cpu / calls * 1e6
        request = scenarios.allocate_request(first.ids, 1, 1)
        elapsed, _cpu, made = scenarios.allocate_throughput(session, request, calls * 2)
        out["Allocate throughput, 4 threads"] = made / elapsed
        pushes = scenarios.list_updates(session, changes)  # ms
        out["ListAndWatch push p50"] = measure.percentile(pushes, 0.5) * 1e3
    command = [sys.executable, "-c", _ROUND_TRIP, str(calls)]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=True)
    out["in-process unary round trip CPU"] = float(done.stdout)
    return out


Rounds = dict[str, list[dict[str, float]]]


def run(sides: dict[str, str], rounds: int, measure_round: Callable[[], dict[str, float]]) -> Rounds:
    results: Rounds = {name: [] for name in sides}
    names = list(sides)
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            log(f"round {index + 1}/{rounds}: {name}")
            os.environ["PYTHONPATH"] = sides[name]
            results[name].append(measure_round())
    return results


def report(results: Rounds, header: list[str]) -> str:
    old, new = results["old"], results["new"]
    lines = header + [
        "",
        f"| figure | old (median of {len(old)}) | new (median of {len(new)}) | change | noise "
        "| new/old, paired by round | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for figure, (unit, higher_better) in FIGURES.items():
        a = [r[figure] for r in old]
        b = [r[figure] for r in new]
        ma, mb = statistics.median(a), statistics.median(b)
        noise = max((max(a) - min(a)) / ma, (max(b) - min(b)) / mb) * 100
        change = (mb - ma) / ma * 100
        worse = -change if higher_better else change
        verdict = "worse beyond noise" if worse > noise else ("better" if worse < -noise else "within noise")
        # Each round ran both sides back to back, so their ratio cancels most of the drift.
        ratios = sorted(y / x for x, y in zip(a, b))
        quarter = len(ratios) // 4
        paired = (
            f"{statistics.median(ratios):.2f} "
            f"(middle half {ratios[quarter]:.2f}-{ratios[len(ratios) - 1 - quarter]:.2f})"
        )
        lines.append(
            f"| {figure} ({unit}) | {ma:.1f} | {mb:.1f} | {change:+.1f}% | ±{noise:.0f}% | {paired} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="directory holding the old sdplite package")
    parser.add_argument("--new", required=True, help="directory holding the new sdplite package")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=2000, help="Allocate calls per shape per round")
    parser.add_argument("--changes", type=int, default=100, help="ListAndWatch pushes per round")
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sides = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    header = [f"{name}: sdplite imported from {imported_from(path)}" for name, path in sides.items()]
    for line in header:
        log(line)
    used_before, started = measure.machine_seconds()[0], time.monotonic()
    results = run(sides, args.rounds, lambda: one_round(args.calls, args.changes))
    used = measure.machine_seconds()[0] - used_before
    capacity = (time.monotonic() - started) * (os.cpu_count() or 1)
    header.append(f"machine CPU busy during the run, all processes: {used / capacity * 100:.0f}%")
    print(report(results, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
