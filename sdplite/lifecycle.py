"""One plugin's life: serve, register, notice restarts, start over — composed from parts.

A :class:`Controller` owns no socket, thread or timer of its own. It puts
together parts with one job each and decides, in :meth:`Controller.step`,
which of them acts now:

- :class:`~.serving.Serving`: a fresh server per start, on each socket;
- a :class:`~.registration.Registration`: Register with backoff through
  ``kubelet.sock``, or the plugin watcher's GetInfo;
- :class:`~.restarts.RestartWatch`: when to start over;
- a :class:`Service`: what this kind of plugin serves and feeds (for device
  plugins :class:`~.service.DevicePluginService`, with its device feed).

The order is the kubelet's (docs/design.md, "A plugin's life"): serve first,
then register (the kubelet dials back before it answers Register); on a
restart end the old streams, stop the server, start a fresh one, register
again. Only the supervisor's thread calls ``step``; other threads ask for a
restart or a scan and wake it.

A DRA plugin is another :class:`Service` with two sockets (its service, then
its registration socket) and a :class:`~.registration.WatcherRegistration`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol

from .registration import Registration
from .restarts import RestartWatch, is_kubelet_restart
from .serving import PluginError, Serving
from .wire import Method, Server, ServerContext
from .wire.shutdown import Shutdown

__all__ = ["Controller", "PluginError", "Service", "Waker", "STOP_GRACE"]

log = logging.getLogger("sdplite")

#: How long a stop (or the stop half of a restart) waits for calls, streams
#: and user code before it abandons what is left (see wire/shutdown.py).
STOP_GRACE = 1.0
#: With nothing due, how long until step() looks again anyway.
IDLE_STEP = 60.0
#: After a failed server start, when to try again.
START_RETRY = 0.5


class Service(Protocol):
    """What one kind of plugin serves; the rest of its life is the controller's.

    Called from the controller's thread only, except :meth:`methods`'
    ``stream_ended`` callback and :attr:`streams`, which come from call
    threads, and :meth:`interrupt`, which comes from any thread.
    """

    #: Who this is in log lines and the status file (a resource or driver name).
    name: str

    def methods(self, stream_ended: Callable[[ServerContext], None]) -> list[Method[Any]]:
        """The RPCs to serve on a new server; streams call ``stream_ended`` when they end."""

    def started(self) -> None:
        """A new server listens (before registering): run hooks, start feeding devices."""

    def stopping(self) -> None:
        """The server is about to stop: end the streams so clients see a clean end."""

    def stopped(self, shutdown: Shutdown) -> None:
        """The server has stopped: stop feeding (until ``shutdown``'s deadline), run hooks."""

    def step(self, now: float) -> float:
        """Do periodic work that is due (a rescan); return when next to be called."""

    @property
    def streams(self) -> int:
        """Streams the kubelet holds open on us now (0 for a plugin without streams)."""

    def status(self) -> dict[str, Any]:
        """Plain facts for the status file: the name under "resource", and counts."""

    def interrupt(self) -> None:
        """The process is stopping: cut short any wait in :meth:`started` (any thread)."""

    def resume(self) -> None:
        """A new run begins (after an earlier one was interrupted)."""

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good: join what is left of the feed, until ``shutdown``'s deadline."""


class Waker:
    """A wake-up that the supervisor plugs in when it starts running the controller.

    Parts are given the waker when the plugin is built; until a supervisor
    runs it, waking does nothing.
    """

    def __init__(self) -> None:
        self._wake: Callable[[], None] = _nothing

    def plug(self, wake: Optional[Callable[[], None]]) -> None:
        self._wake = wake or _nothing

    def __call__(self) -> None:
        self._wake()


def _nothing() -> None:
    pass


class Controller:
    """Runs one plugin's life from the supervisor's ``step(now)`` calls (see the module docstring).

    ``servings`` are started in order and stopped in reverse: the service's
    methods go on the first socket, the registration's on the last (one socket
    serves both). ``features`` (objects with ``start()`` and ``stop(shutdown)``:
    a metrics endpoint, a CDI spec, health checks) run while the plugin runs;
    ``stats`` gives the counters of the metrics endpoint, or None without one.
    """

    def __init__(
        self,
        service: Service,
        servings: Sequence[Serving],
        registration: Registration,
        restarts: RestartWatch,
        waker: Optional[Waker] = None,
        features: Optional[list[Any]] = None,
        stats: Callable[[], Any] = lambda: None,
    ) -> None:
        if not servings:
            raise ValueError("a plugin serves at least one socket")
        self.service = service
        self.servings = list(servings)
        self.registration = registration
        self.restarts = restarts
        self.waker = waker or Waker()
        #: Optional features, started and stopped with the run (the list may grow until then).
        self.features = features if features is not None else []
        self._stats = stats
        #: Counts server starts; a stream of an older server no longer counts.
        self.generation = 0
        #: Why the plugin stopped on its own (the supervisor then stops), or None.
        self.fatal: Optional[str] = None
        self._running = False
        self._serving = False
        self._stopping = False
        self._interrupted = False  # the process is stopping (set from any thread)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def registered(self) -> threading.Event:
        """Set while the kubelet has this plugin registered."""
        return self.registration.registered

    @property
    def running(self) -> bool:
        """True between :meth:`attach` and :meth:`shutdown`."""
        return self._running

    def socket_paths(self) -> list[str]:
        return [serving.path for serving in self.servings]

    # -- the supervisor's interface --------------------------------------------

    def attach(self, wake: Callable[[], None]) -> None:
        """Begin a run under a supervisor that wakes with ``wake``."""
        with self._lock:
            if self._running:
                raise RuntimeError(f"{self.name} is already running")
            self._running = True
        self.fatal = None
        self.registration.fatal = None
        self._stopping = False
        self._interrupted = False
        self.service.resume()
        self.waker.plug(wake)

    def listeners(self) -> list[Server]:
        """The servers whose listening sockets the supervisor selects on and accepts for."""
        return [s.server for s in self.servings if s.server is not None]

    def directories(self) -> set[str]:
        """Directories whose changes concern this plugin (its sockets', ``kubelet.sock``'s)."""
        dirs = {os.path.dirname(path) for path in self.socket_paths()}
        if self.restarts.kubelet_socket is not None:
            dirs.add(os.path.dirname(self.restarts.kubelet_socket))
        return dirs

    def dir_changed(self, directory: str, names: Sequence[str]) -> None:
        """Files changed in ``directory``; a new ``kubelet.sock`` means: register now."""
        kubelet = self.restarts.kubelet_socket
        if kubelet is not None and os.path.dirname(kubelet) == directory:
            if os.path.basename(kubelet) in names:
                self.registration.request()

    def interrupt(self) -> None:
        """The process is stopping: no more steps, and a wait in one is cut short (any thread)."""
        self._interrupted = True
        self.service.interrupt()

    def request_restart(self, reason: str) -> None:
        """Restart the server and register again (any thread)."""
        self.restarts.request(reason)
        self.waker()

    def status(self) -> dict[str, Any]:
        """A plain snapshot for the status file."""
        return {
            **self.service.status(),
            "socket": self.servings[-1].path,
            "registered": self.registered.is_set(),
            "error": self.fatal,
            "stopping": self._stopping,
        }

    # -- the step ----------------------------------------------------------------

    def step(self, now: float) -> float:
        """Do whatever is due; return when to be called again (monotonic time)."""
        if self.fatal or self._interrupted:
            return float("inf")
        reason, recheck_at = self._restart_due(now)
        if reason is not None and self._serving:
            log.info("%s: restarting: %s", self.name, reason)
            self._count_restart(reason)
            shutdown = Shutdown(STOP_GRACE)
            self._stop(shutdown)
            shutdown.report(log, f"{self.name}: restart")
            if self._interrupted:  # the process began to stop meanwhile: do not start again
                return float("inf")
        if not self._serving:
            retry_at = max(serving.retry_at for serving in self.servings)
            if now < retry_at:
                return retry_at
            if not self._start(now):
                return max(now + START_RETRY, *(serving.retry_at for serving in self.servings))
            if self._interrupted:  # a stop cut the start's waits short: register no more
                return float("inf")
        wake_at = now + IDLE_STEP if recheck_at is None else recheck_at
        wake_at = min(wake_at, self.service.step(now))
        was_registered = self.registered.is_set()
        wake_at = min(wake_at, self.registration.step(now))
        if self.registration.fatal:
            self.fatal = self.registration.fatal
            return float("inf")
        if self.registered.is_set() and not was_registered and self.restarts.stream_loss_pending:
            wake_at = now  # the kubelet already dropped the stream it opened: look again now
        return wake_at

    def _count_restart(self, reason: str) -> None:
        stats = self._stats()
        if stats is not None:
            kubelet = is_kubelet_restart(reason)
            stats.count("restarts", cause="kubelet" if kubelet else "other")
            if kubelet:
                stats.count("kubelet_restarts")

    def _restart_due(self, now: float) -> tuple[Optional[str], Optional[float]]:
        if not self._serving:
            return self.restarts.due(now, None, False)
        lost = next((s.path for s in self.servings if not s.owns_socket()), None)
        registration = self.registration
        return self.restarts.due(now, lost, registration.registered.is_set(), registration.registered_through)

    def _start(self, now: float) -> bool:
        """Start every socket's server, then the service; False to try again later."""
        self.generation += 1
        generation = self.generation
        method_sets: list[list[Method[Any]]] = [[] for _ in self.servings]
        method_sets[0] += self.service.methods(lambda context: self._stream_ended(context, generation))
        method_sets[-1] += self.registration.methods()
        for serving, methods in zip(self.servings, method_sets):
            try:
                started = serving.start(methods, now)
            except PluginError as exc:
                self.fatal = str(exc)
                log.error("%s: %s", self.name, exc)
                started = False
            if not started:
                shutdown = Shutdown(STOP_GRACE)
                for other in self.servings:
                    other.stop(shutdown)
                shutdown.report(log, f"{self.name}: start")
                return False
        self._serving = True
        self.restarts.reset()
        self.service.started()
        self.registration.server_started()
        return True

    def _stop(self, shutdown: Shutdown) -> None:
        self._serving = False
        self.registration.server_stopped()
        self.restarts.reset()
        self.service.stopping()
        for serving in reversed(self.servings):
            serving.stop(shutdown)
        self.service.stopped(shutdown)

    def _stream_ended(self, context: ServerContext, generation: int) -> None:
        # Only the current server's streams count, and only ends the kubelet caused.
        # A tool such as `sdplite inspect` may watch too: only when no stream is
        # left is the kubelet no longer watching.
        if (
            generation != self.generation
            or not context.cancelled()
            or self._stopping
            or self.service.streams != 0
        ):
            return
        self.registration.peer_left()
        # Before Register returns too: the kubelet opens ListAndWatch first.
        if not any(serving.stopping for serving in self.servings):
            self.restarts.stream_lost(time.monotonic())
            self.waker()

    def start_features(self) -> None:
        """Start the optional features (the supervisor does, as the run begins)."""
        for feature in self.features:
            feature.start()

    def stop_features(self, shutdown: Optional[Shutdown] = None) -> None:
        """Stop them again, last first, once the plugin has stopped serving;
        what is still running at ``shutdown``'s deadline is named there."""
        for feature in reversed(self.features):
            try:
                feature.stop(shutdown)
            except Exception:
                log.exception("%s: stopping %r failed", self.name, feature)

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good by ``shutdown``'s deadline: streams ended, sockets removed.

        What user code or the kubelet keeps running past it is named in
        ``shutdown`` and abandoned (daemon threads).
        """
        self._stopping = True
        self.interrupt()
        if self._serving:
            self._stop(shutdown)
        self.registration.shutdown(shutdown)
        self.service.shutdown(shutdown)
        self.waker.plug(None)
        with self._lock:
            self._running = False
