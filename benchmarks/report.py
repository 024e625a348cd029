"""Collecting samples, and the table: medians per implementation, ratios to grpcio, targets met or missed.

A figure's value is the median of its samples (per-round values or single
measurements, whichever the figure collects). Ratios are to grpcio in the
same run. A target is either a ratio to grpcio (lower or higher is better)
or an absolute limit on sdplite's own value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import measure
from session import IMPLS


@dataclass(frozen=True)
class Target:
    kind: str  # "max_ratio", "min_ratio" or "max_value"
    limit: float
    unit: str = ""

    def text(self) -> str:
        if self.kind == "max_ratio":
            return f"<= {self.limit:g}x"
        if self.kind == "min_ratio":
            return f">= {self.limit:g}x"
        return f"<= {self.limit:g}{self.unit}"

    def met(self, value: float, ratio: float) -> Optional[bool]:
        checked = value if self.kind == "max_value" else ratio
        if math.isnan(checked):
            return None
        if self.kind == "min_ratio":
            return checked >= self.limit
        return checked <= self.limit


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    digits: int = 1
    target: Optional[Target] = None


class Results:
    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.notes: list[str] = []

    def add(self, key: str, impl: str, *values: float) -> None:
        self.samples[key][impl].extend(values)

    def value(self, key: str, impl: str) -> float:
        return measure.median(self.samples[key][impl])

    def count(self, key: str, impl: str) -> int:
        return len(self.samples[key][impl])


def figures(small: int, big: int) -> list[Figure]:
    """Every row of the table, in order; the list sizes name two of them."""

    def list_rows(size: int, key: str, targets: bool) -> list[Figure]:
        n = f"{size // 1000}k" if size % 1000 == 0 else str(size)
        return [
            Figure(f"{key}_call_ms", f"List {n}: LAW call -> first msg, ms", 1, _r(1.0) if targets else None),
            Figure(f"{key}_start_ms", f"List {n}: process start -> first msg, ms", 0),
            Figure(f"{key}_bytes", f"List {n}: first msg size, bytes", 0),
            Figure(f"{key}_peak_mib", f"List {n}: plugin peak RSS, MiB", 1, _r(0.7) if targets else None),
        ]

    return [
        Figure("alloc_1x1_cpu_us", "Allocate 1x1: plugin CPU/call, us", 0, _r(0.6)),
        Figure("alloc_1x1_p50_ms", "Allocate 1x1: p50 latency, ms", 3, _r(0.85)),
        Figure("alloc_1x1_p99_ms", "Allocate 1x1: p99 latency, ms", 3),
        Figure("alloc_8x8_cpu_us", "Allocate 8x8: plugin CPU/call, us", 0, _r(0.6)),
        Figure("alloc_8x8_p50_ms", "Allocate 8x8: p50 latency, ms", 3, _r(0.85)),
        Figure("alloc_8x8_p99_ms", "Allocate 8x8: p99 latency, ms", 3),
        Figure("tput_calls_per_s", "Allocate 1x1, 4 threads: calls/s", 0, Target("min_ratio", 1.5)),
        Figure("tput_cpu_us", "Allocate 1x1, 4 threads: plugin CPU/call, us", 0),
        Figure("law_p50_ms", "LAW update: p50 latency, ms", 3, _r(0.8)),
        Figure("law_p99_ms", "LAW update: p99 latency, ms", 3),
        *list_rows(small, "list_small", False),
        *list_rows(big, "list_big", True),
        Figure("start_register_ms", "Start -> Register, ms", 0, _r(0.7)),
        Figure("rereg_s", "Re-registration after kubelet restart, s", 3, Target("max_value", 0.2, " s")),
        Figure("idle_rss_mib", "Idle: RSS, MiB", 1, _r(0.65)),
        Figure("idle_uss_mib", "Idle: USS, MiB", 1),
        Figure("idle_threads", "Idle: threads (control thread excluded)", 0, Target("max_value", 4)),
        Figure("ready_threads", "Threads just after first list", 0),
        Figure("idle_cpu_ms_per_s", "Idle: plugin CPU, ms per s", 2),
        Figure("import_ms", "Import time of the stack, ms", 0, _r(0.7)),
        Figure("installed_mib", "Installed run-time deps, MiB", 2, _r(0.2)),
    ]


def _r(limit: float) -> Target:
    return Target("max_ratio", limit)


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 10000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: float, base: float) -> float:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return math.nan
    return value / base


def table(results: Results, rows: list[Figure]) -> str:
    """A Markdown table: one row per figure, a column per implementation, ratios and the verdict."""
    header = ["Figure", *IMPLS, "sdplite/grpcio", "grpclib/grpcio", "Target", "Result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = {impl: results.value(row.key, impl) for impl in IMPLS}
        base = values["grpcio"]
        ratios = {impl: _ratio(values[impl], base) for impl in IMPLS}
        met = verdict(results, row)
        result = "" if row.target is None else ("-" if met is None else ("PASS" if met else "MISS"))
        cells = [
            row.label,
            *(_fmt(values[impl], row.digits) for impl in IMPLS),
            _fmt(ratios["sdplite"], 2) + ("x" if not math.isnan(ratios["sdplite"]) else ""),
            _fmt(ratios["grpclib"], 2) + ("x" if not math.isnan(ratios["grpclib"]) else ""),
            row.target.text() if row.target else "",
            result,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: Results, row: Figure) -> Optional[bool]:
    """True/False if sdplite meets/misses the row's target, None without a target or a value."""
    if row.target is None:
        return None
    value = results.value(row.key, "sdplite")
    return row.target.met(value, _ratio(value, results.value(row.key, "grpcio")))
