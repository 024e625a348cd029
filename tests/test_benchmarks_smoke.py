"""The benchmark harness still runs: ``python benchmarks/run.py --quick`` exits 0 and prints its table.

No timing is asserted (tests never assert speed); this only keeps the
harness from rotting while sdplite changes under it. The benchmark's own
requirements (grpclib and friends, benchmarks/requirements.txt) are not
sdplite's test dependencies: scripts/test.sh installs them, and a missing
one fails this test with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def test_benchmark_requirements_are_installed() -> None:
    missing = [name for name in ("grpc", "grpclib", "pyinstrument") if importlib.util.find_spec(name) is None]
    assert not missing, f"{missing} missing: pip install -r benchmarks/requirements.txt"


def test_quick_benchmark_run_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    out = result.stdout
    header = "| Figure | sdplite | grpcio | grpclib | sdplite/grpcio | grpclib/grpcio | Target | Result |"
    assert header in out
    for row in ("Allocate 1x1: plugin CPU/call", "LAW update: p50 latency", "Start -> Register", "Idle: RSS"):
        assert row in out
    assert "Targets missed:" in out


def test_idle_after_storm_runs_and_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "idle_after_storm.py"), "--cases", "50", "--idle", "0.5"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert "50 hostile connections in" in result.stdout and "plugin alive after: True" in result.stdout
    assert "| idle CPU, ms per s |" in result.stdout
