"""Run a function with every thread under cProfile, timed in CPU seconds, and save one merged profile.

cProfile only sees the thread that enables it, and sdplite does its work
on reader, worker and supervisor threads; so ``threading.Thread.run`` is
wrapped to give each new thread a profiler of its own. ``time.thread_time``
as the timer means blocking waits cost nothing: the profile shows CPU.
Threads still running at the end are left out.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from typing import Callable

_finished: list[cProfile.Profile] = []
_lock = threading.Lock()


def _profiled_run(
    self: threading.Thread, _original: Callable[[threading.Thread], None] = threading.Thread.run
) -> None:
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        _original(self)
    finally:
        profiler.disable()
        with _lock:
            _finished.append(profiler)


def install() -> None:
    """Profile every thread started from now on."""
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]


def run(target: Callable[[], None], out: str) -> None:
    """Run ``target`` profiled on this thread; then save it merged with the finished threads' profiles."""
    install()
    main = cProfile.Profile(time.thread_time)
    main.enable()
    try:
        target()
    finally:
        main.disable()
        time.sleep(0.2)  # let threads stopped by target() finish their run()
        stats = pstats.Stats(main)
        with _lock:
            for profiler in _finished:
                stats.add(profiler)
        stats.dump_stats(out)
