"""Unary calls run by the thread that read them, with a watchdog (leader/follower).

Handing a call from the reading thread to a worker costs two thread switches
and a GIL hand-over each way: more than h2's whole work for a small call.
So the reader runs the unary calls of each batch it reads itself, one after
another, before it reads again. A slow handler must not hold up the rest of
its connection (the kubelet multiplexes ListAndWatch and Allocate on one), so
while the reader runs calls a watchdog on a worker thread looks every
``handoff_after`` seconds: if one call has run that long, the watchdog takes
the reading role, hands the calls still waiting to workers and reads on. The
thread running the slow call finds it is no longer the reader when the call
returns, and leaves. With no calls to run the watchdog stands down at its
next look, so an idle connection costs nothing.

A connection may end while calls wait in ``_ready`` (the batch that queued
them also held a GOAWAY, or the peer vanished): their streams are dead, so
whoever looks next, reader or watchdog, drops them, and the watchdog stands
down with its connection rather than waking every ``handoff_after`` forever.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .connection import Transport

__all__ = ["CallRunningTransport"]

log = logging.getLogger("sdplite.wire")


class CallRunningTransport(Transport):
    """A transport whose reader may run calls; subclasses say how to run one."""

    def __init__(self, *args: Any, handoff_after: Optional[float] = 0.005, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Seconds a reader may spend in one call before another thread reads;
        #: None: the reader runs no calls.
        self.handoff_after = handoff_after
        # All guarded by ``lock``:
        self._ready: list[Any] = []  # calls the reader will run, in order
        self._running_since: Optional[float] = None  # when the reader began its current call
        self._runs = 0  # calls begun by readers so far: the watchdog's sign of activity
        self._watchdog = False  # a watchdog is armed

    # -- hooks ---------------------------------------------------------------

    def run_call(self, call: Any) -> None:
        """Run one call to its end (no lock held); must not raise."""
        raise NotImplementedError

    def hand_off(self, call: Any) -> None:
        """Give a call to another thread (no lock held)."""
        raise NotImplementedError

    def start_watchdog(self, watchdog: Callable[[], None]) -> bool:
        """Run ``watchdog`` on another thread; False if none is available."""
        raise NotImplementedError

    # -- the reader's side ---------------------------------------------------

    def run_on_reader(self, call: Any) -> bool:
        """Queue ``call`` for the reader (lock held); False if it cannot take it.

        It cannot when ``handoff_after`` is None or no watchdog can be armed;
        the caller then hands the call to a worker itself.
        """
        if self.handoff_after is None:
            return False
        if not self._watchdog:
            if not self.start_watchdog(self._watch):
                return False
            self._watchdog = True
        self._ready.append(call)
        return True

    def after_read(self, reader: int) -> bool:
        while True:
            with self.lock:
                if self._reader_ident != reader:
                    return False
                if self.closed:
                    self._ready.clear()  # their streams died with the connection
                if not self._ready:
                    return True
                call = self._ready.pop(0)
                self._running_since = time.monotonic()
                self._runs += 1
            try:
                self.run_call(call)
            finally:
                with self.lock:
                    if self._reader_ident == reader:  # else the clock is the new reader's
                        self._running_since = None

    # -- the watchdog's side -------------------------------------------------

    def _watch(self) -> None:
        period = self.handoff_after
        assert period is not None
        seen = -1
        while True:
            with self.lock:
                since = self._running_since
                now = time.monotonic()
                if since is not None and now - since >= period:
                    self._reader_ident = threading.get_ident()  # the role moves here, at once
                    self._running_since = None
                    self._watchdog = False
                    waiting = [] if self.closed else self._ready  # dead calls are dropped
                    self._ready = []
                    break
                if since is None and (self.closed or (not self._ready and self._runs == seen)):
                    # Nothing running, and either the connection is gone (the calls
                    # still waiting died with it: drop them) or nothing is waiting
                    # and nothing began since the last look: stand down. (A call
                    # queued after this arms a new watchdog.)
                    self._ready.clear()
                    self._watchdog = False
                    return
                seen = self._runs
                wait = period if since is None else since + period - now
            time.sleep(wait)
        log.debug("%s: a call ran over %.3f s on the reader; this thread reads now", self.name, period)
        for call in waiting:
            self.hand_off(call)
        self._read_loop()
