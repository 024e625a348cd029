"""The loop that drives every plugin of a process, and the signals that steer it.

One thread (the main thread under :func:`run`) sleeps in ``select`` on the
plugin directories' inotify fds, the plugins' listening sockets (it accepts
their connections, so no plugin needs an accept thread) and a wake-up pipe,
and on waking lets each plugin's :class:`~.lifecycle.Controller` do what is
due. Without inotify it
polls every 0.1 s; with it, it still looks once a second in case an event was
missed.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from .dirwatch import DirWatch
from .health import StatusFile
from .lifecycle import STOP_GRACE, Controller, PluginError
from .logtext import cut
from .wire.shutdown import Shutdown

if TYPE_CHECKING:
    from .plugin import DevicePlugin

__all__ = ["Supervisor", "run"]

log = logging.getLogger("sdplite")

POLL_WITH_INOTIFY = 1.0
POLL_WITHOUT_INOTIFY = 0.1


class Supervisor:
    def __init__(self, plugins: Sequence[DevicePlugin], status_file: Optional[str] = None) -> None:
        if not plugins:
            raise ValueError("give at least one plugin to run")
        paths = [p.socket_path for p in plugins]
        if len(set(paths)) != len(paths):
            raise ValueError(f"two plugins share a socket path: {paths}")
        self.plugins = list(plugins)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.controllers = [Controller(p, self.wake) for p in plugins]
        for plugin, controller in zip(plugins, self.controllers):
            plugin._attach(controller)
        self._stop = threading.Event()
        dirs = {os.path.dirname(p.socket_path) for p in plugins}
        self._watches = {d: DirWatch(d) for d in dirs}
        self._closed = False
        path = status_file or os.environ.get("SDPLITE_STATUS_FILE")
        self._status = StatusFile(path) if path else None

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    def stop(self) -> None:
        """Stop (any thread, or a signal handler): :meth:`run` returns within ``STOP_GRACE``."""
        self._stop.set()
        for controller in self.controllers:
            controller.interrupt()
        self.wake()

    def restart_all(self, reason: str) -> None:
        for controller in self.controllers:
            controller.request_restart(reason)

    def run(self) -> None:
        """Serve until :meth:`stop`; raise :class:`PluginError` if a plugin cannot run."""
        try:
            for plugin in self.plugins:
                plugin.start_features()
            while not self._stop.is_set():
                now = time.monotonic()
                wake_at = min(c.step(now) for c in self.controllers)
                if self._status is not None:
                    self._status.update(self.controllers)
                failed = [c for c in self.controllers if c.fatal]
                if failed:
                    raise PluginError("; ".join(c.fatal or "" for c in failed))
                self._sleep(max(0.0, wake_at - time.monotonic()))
        finally:
            shutdown = Shutdown(STOP_GRACE)  # one deadline for every plugin
            for controller in self.controllers:
                controller.shutdown(shutdown)
            for plugin in self.plugins:
                plugin.stop_features(shutdown)
            shutdown.report(log, "stop")
            if self._status is not None:
                self._status.remove()
            self._close()
            names = ", ".join(cut(p.resource_name) for p in self.plugins)
            log.info("stopped: %s", names)

    def _sleep(self, timeout: float) -> None:
        """Wait for a wake-up, a directory change or a connection to accept."""
        listening = {c.server.fileno(): c.server for c in self.controllers if c.server is not None}
        fds = [self._wake_r, *listening]
        poll = POLL_WITH_INOTIFY
        for watch in self._watches.values():
            if watch.active or watch.rewatch():
                fds.append(watch.fileno())
            else:
                poll = POLL_WITHOUT_INOTIFY
        ready = select.select(fds, [], [], min(timeout, poll))[0]
        for fd in ready:
            if fd in listening:
                listening[fd].accept_ready()
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for directory, watch in self._watches.items():
            if watch.fileno() in ready and "kubelet.sock" in watch.drain():
                for plugin, controller in zip(self.plugins, self.controllers):
                    if os.path.dirname(plugin.socket_path) == directory:
                        controller.request_register()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in self._watches.values():
            watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for plugin in self.plugins:
            plugin._attach(None)


def run(*plugins: DevicePlugin) -> None:
    """Serve these plugins until SIGTERM or SIGINT; SIGHUP restarts them all.

    Must be called from the main thread (signals are delivered there). Returns
    once every plugin has stopped (streams ended, sockets removed), within
    about a second of the signal whatever is going on: user code that has
    not returned by then is left on its daemon thread and named in one
    "still running after" WARNING line. Raises :class:`PluginError` if a
    plugin cannot run at all.
    """
    supervisor = Supervisor(plugins)
    previous: dict[int, Any] = {}

    def on_stop(signum: int, frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        supervisor.stop()

    def on_hup(signum: int, frame: Any) -> None:
        log.info("received SIGHUP: restarting")
        supervisor.restart_all("SIGHUP")

    handlers: dict[int, Any] = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    for signum, handler in handlers.items():
        previous[signum] = signal.signal(signum, handler)
    try:
        supervisor.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class BackgroundRunner:
    """A supervisor on its own thread, for embedding and tests (``start``/``stop``)."""

    def __init__(self, plugins: Sequence[DevicePlugin]) -> None:
        self.supervisor = Supervisor(plugins)
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="sdplite-supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as exc:  # kept for stop() to re-raise
            self.error = exc
            log.error("sdplite stopped: %s", cut(exc, 1000))

    def stop(self, timeout: float = 30.0) -> None:
        self.supervisor.stop()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
