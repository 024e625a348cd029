"""Values from peers and user code, cut short before they reach a log line.

A device ID, a method path or an exception message can come from a peer we do
not control (a hostile client can send a 64 KiB ID) or from user code (an
exception whose message holds a whole device list). Logged whole, one such
value drowns the lines around it and can fill a node's disk. Every log call
that prints such a value passes it through `cut` first; the original length
stays in the line, so a reader knows something was left out.

An attack repeats itself: a storm of connections over ``max_connections``,
a connection sending one malformed request after another. One line each
would bury everything else, so `Repeats` logs the first of a kind at once
and sums up the rest of its window in one line ("refused 136 connections
over max_connections in the last 10 s").
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any

__all__ = ["LIMIT", "cut", "cut_list", "cut_traceback", "Repeats"]

# Long enough for any real resource name, device ID or socket path; short
# enough that a screen of log lines stays readable.
LIMIT = 200


def cut(value: object, limit: int = LIMIT) -> str:
    """`str(value)`, or its first `limit` characters and the original length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def cut_list(values: Iterable[object], limit: int = LIMIT) -> str:
    """Comma-joined values, each cut, the whole cut again to `limit`."""
    items = list(values)
    joined = ",".join(cut(value, limit) for value in items)
    if len(joined) <= limit:
        return joined
    return f"{joined[:limit]}... ({len(items)} values)"


def cut_traceback(exc: BaseException, limit: int = LIMIT) -> str:
    """The traceback of ``exc`` (and of its causes) with each message cut.

    A log call's ``exc_info`` would print the exception's message whole.
    """
    parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
    # Frames are a file, a line number and a line of our or the user's source;
    # only messages grow without bound. 2 * limit leaves every frame whole.
    return "".join(
        part if len(part) <= 2 * limit else cut(part.rstrip("\n"), 2 * limit) + "\n" for part in parts
    )


class Repeats:
    """Logs the first event of a kind at once and counts the rest of its window.

    ``note(kind, summary, level, msg, *args)`` logs ``msg % args`` unless an
    event of the same ``kind`` was logged less than ``period`` seconds ago;
    then it only counts. The count goes out as one line, ``summary`` with
    ``{count}`` replaced, followed by "in the last N s", when the next event of that kind comes
    after the window, or at :meth:`flush` (call it when the storm is likely
    over: a connection closed, the server stops). No timer thread: an idle
    process stays idle.
    """

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self.logger = logger
        self.period = period
        self._lock = threading.Lock()
        # kind -> [window start, events in the window, summary format, level]
        self._windows: dict[str, list[Any]] = {}

    def note(self, kind: str, summary: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window[0] < self.period:
                window[1] += 1
                return
            self._windows[kind] = [now, 1, summary, level]
        if window is not None:
            self._emit(window, now)
        self.logger.log(level, msg, *args)

    def flush(self, due_only: bool = False) -> None:
        """Sum up every window with unlogged events (only those past ``period`` if ``due_only``)."""
        now = time.monotonic()
        with self._lock:
            done = [
                kind
                for kind, window in self._windows.items()
                if not due_only or now - window[0] >= self.period
            ]
            windows = [self._windows.pop(kind) for kind in done]
        for window in windows:
            self._emit(window, now)

    def _emit(self, window: list[Any], now: float) -> None:
        start, count, summary, level = window
        if count > 1:
            text = summary.replace("{count}", str(count))
            self.logger.log(level, "%s in the last %.0f s", text, max(1.0, now - start))
