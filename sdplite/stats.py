"""Counters one plugin keeps for its metrics endpoint, and nothing when there is none.

A plugin's :class:`~sdplite.service.DeviceState` has ``stats = None`` unless
``metrics_port`` is set; every place that counts checks for None first, so a
plugin without metrics pays one attribute test. Values that can be read at
any moment (devices by health, open streams, registered) are not counted
here: the endpoint reads them from the plugin when scraped.
"""

from __future__ import annotations

import threading

__all__ = ["Stats", "ALLOCATE_BUCKETS"]

#: Upper bounds (seconds) of the Allocate duration histogram's buckets.
ALLOCATE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

Labels = tuple[tuple[str, str], ...]


class Stats:
    """Thread-safe counters by name and labels, plus the Allocate duration histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], int] = {}
        self._buckets = [0] * len(ALLOCATE_BUCKETS)
        self._allocate_count = 0
        self._allocate_sum = 0.0

    def count(self, name: str, **labels: str) -> None:
        """Add one to counter ``name`` with these labels."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1

    def allocate(self, result: str, seconds: float) -> None:
        """One Allocate call: its result (granted, refused, failed) and how long it took."""
        self.count("allocations", result=result)
        with self._lock:
            self._allocate_count += 1
            self._allocate_sum += seconds
            for i, bound in enumerate(ALLOCATE_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
                    break

    def counters(self) -> dict[tuple[str, Labels], int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counters)

    def allocate_histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative (bound, count) pairs, the total count and the sum of seconds."""
        with self._lock:
            buckets, count, total = list(self._buckets), self._allocate_count, self._allocate_sum
        cumulative, running = [], 0
        for bound, n in zip(ALLOCATE_BUCKETS, buckets):
            running += n
            cumulative.append((bound, running))
        return cumulative, count, total
