"""The device feed: where a plugin's device lists come from, on threads that may hang.

Simple mode re-reads ``get_devices()`` every ``interval`` seconds and on
request, each time on a short-lived thread, so a ``get_devices`` that hangs
never stalls restart detection (the controller's thread only starts scans and
notices when one is overdue). Flexible mode runs the implementation's
``list_and_watch(watch)`` on a thread of its own for as long as the server
runs, calling it again after a pause if it raises.

Either way each list goes to ``publish`` (the plugin's device state); a list
the kubelet could not use is logged and the last good one stays. On each
server start the feed waits up to :data:`FIRST_LIST_WAIT` for the first list,
so that the plugin registers with its devices rather than with none.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .devices import DeviceListError
from .impl import SimpleImpl, Watch
from .logtext import cut, cut_traceback
from .wire.shutdown import Shutdown

__all__ = ["DeviceFeed", "FIRST_LIST_WAIT"]

log = logging.getLogger("sdplite")

#: How long a server start waits for the first list before registering anyway.
FIRST_LIST_WAIT = 2.0
#: While a scan is overdue, how often to look again.
SCAN_RECHECK = 5.0


class DeviceFeed:
    """Feeds ``publish`` from ``impl``: scans (a :class:`SimpleImpl`) or its ``list_and_watch``.

    :meth:`start`, :meth:`stop`, :meth:`step` and :meth:`shutdown` are the
    controller's; :meth:`request_scan` and :meth:`interrupt` may be called
    from any thread. ``wake`` asks the controller's thread for a :meth:`step`
    soon; ``has_list`` tells whether a good list was ever published (for the
    log line about a bad one); ``on_bad_list`` is called for each bad list.
    """

    def __init__(
        self,
        impl: Any,
        publish: Callable[[Any], Any],
        name: str,
        label: str,
        wake: Callable[[], None] = lambda: None,
        has_list: Callable[[], bool] = lambda: True,
        on_bad_list: Callable[[], None] = lambda: None,
    ) -> None:
        self.impl = impl
        self.name = name  # whose devices, for log lines
        self.label = label  # for thread names
        self._publish = publish
        self._wake = wake
        self._has_list = has_list
        self._on_bad_list = on_bad_list
        self._interrupted = False
        self._first_list: Optional[threading.Event] = None
        self._next_scan = 0.0
        self._scan_requested = False
        self._scan_thread: Optional[threading.Thread] = None
        self._scan_done = threading.Event()
        self._scan_done.set()  # no scan running
        self._scan_started = 0.0
        self._scan_hang_logged = False
        self._watch_stop = threading.Event()
        self._watch_thread: Optional[threading.Thread] = None

    @property
    def scanning(self) -> bool:
        """True in simple mode (the feed scans), False when ``list_and_watch`` sends lists."""
        return isinstance(self.impl, SimpleImpl)

    def publish(self, devices: Any) -> None:
        """Hand a list on; a bad one is logged and the last good one stays."""
        try:
            self._publish(devices)
        except DeviceListError as exc:
            self._on_bad_list()
            source = "get_devices" if self.scanning else "list_and_watch"
            if self._has_list():
                outcome = "keeping the last good one"
            else:
                outcome = "no good list yet, so the kubelet sees 0 devices until one comes"
            log.error("%s: %s sent a bad list, %s: %s", self.name, source, outcome, cut(exc))

    def interrupt(self) -> None:
        """The process is stopping: cut short the wait for a first list (any thread)."""
        self._interrupted = True
        waiting = self._first_list
        if waiting is not None:
            waiting.set()

    def resume(self) -> None:
        """A new run begins: wait for first lists again."""
        self._interrupted = False

    # -- the controller's -------------------------------------------------------

    def start(self) -> None:
        """The server started: first list now (waited for briefly), then more as they come."""
        if isinstance(self.impl, SimpleImpl):
            scanning = self._scan()
            if scanning is not None:
                self._wait_first_list(scanning)
            self._next_scan = time.monotonic() + self.impl.interval
            return
        self._watch_stop = threading.Event()
        watch = Watch(self.publish, self._watch_stop)
        self._watch_thread = threading.Thread(
            target=self._run_watch, args=(watch,), daemon=True, name=f"sdplite-list-and-watch-{self.label}"
        )
        self._watch_thread.start()
        self._wait_first_list(watch.sent)

    def _wait_first_list(self, ready: threading.Event) -> None:
        """Register with the real list, not an empty one, if it comes quickly;
        a stop cuts the wait short (see :meth:`interrupt`)."""
        self._first_list = ready
        if not self._interrupted:
            ready.wait(FIRST_LIST_WAIT)
        self._first_list = None

    def step(self, now: float) -> float:
        """Start a scan if one is due; return when the next is."""
        impl = self.impl
        if not isinstance(impl, SimpleImpl):
            return float("inf")
        wake_at = float("inf")
        if self._scan_requested or now >= self._next_scan:
            # Cleared before the scan starts, so a request made meanwhile is kept.
            self._scan_requested = False
            if self._scan() is not None:
                self._next_scan = now + impl.interval
            else:  # the last scan still runs: try again once it returns (it wakes us)
                self._scan_requested = True
                wake_at = now + SCAN_RECHECK
        return min(wake_at, self._next_scan)

    def request_scan(self) -> None:
        """Re-read ``get_devices`` at the next step rather than at the interval (any thread)."""
        self._scan_requested = True
        self._wake()

    def wind_down(self) -> None:
        """The server is about to stop: ``watch.wait()`` turns True now, so list_and_watch
        winds down while the server stops."""
        self._watch_stop.set()

    def stop(self, shutdown: Shutdown) -> None:
        """The server has stopped: wait for list_and_watch to return, until ``shutdown``'s deadline."""
        self._watch_stop.set()
        thread, self._watch_thread = self._watch_thread, None
        shutdown.join(thread, "list_and_watch, which should return once watch.wait() is True")

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good: the watch thread stopped, a running scan waited for until the deadline."""
        self.interrupt()
        self.stop(shutdown)
        shutdown.join(self._scan_thread, "get_devices")

    # -- threads ------------------------------------------------------------------

    def _scan(self) -> Optional[threading.Event]:
        """Start a scan on its own thread; return an event set when it is done,
        or None if the previous scan has not returned yet."""
        impl = self.impl
        assert isinstance(impl, SimpleImpl)
        if not self._scan_done.is_set():
            if not self._scan_hang_logged:
                log.warning(
                    "%s: get_devices has not returned after %.0fs; keeping the last good list",
                    self.name,
                    time.monotonic() - self._scan_started,
                )
                self._scan_hang_logged = True
            return None
        done = self._scan_done = threading.Event()

        def scan() -> None:
            try:
                devices = impl.scan(self.name)
                if devices is not None:
                    self.publish(devices)
            finally:
                done.set()
                self._wake()

        self._scan_started = time.monotonic()
        self._scan_hang_logged = False
        self._scan_thread = threading.Thread(target=scan, name=f"sdplite-scan-{self.label}", daemon=True)
        self._scan_thread.start()
        return done

    def _run_watch(self, watch: Watch) -> None:
        pause = 1.0
        while True:
            try:
                self.impl.list_and_watch(watch)
                return  # returning is fine: the last list stays
            except Exception as exc:
                log.error(
                    "%s: list_and_watch raised; the last good list stays, calling it again in %.0fs\n%s",
                    self.name,
                    pause,
                    cut_traceback(exc),
                )
            if watch.wait(pause):
                return
            pause = min(pause * 2, 30.0)
