"""The loop that drives every plugin of a process, and the signals that steer it.

One thread (the main thread under :func:`run`) sleeps in ``select`` on the
plugin directories' inotify fds, the plugins' listening sockets (it accepts
their connections, so no plugin needs an accept thread) and a wake-up pipe,
and on waking lets each plugin's :class:`~.lifecycle.Controller` do what is
due. It only schedules: what a plugin does, and when, is its controller's
(docs/design.md, "Threads"). Without inotify it polls every 0.1 s; with it, it
still looks once a second in case an event was missed.

Plugins may join and leave a running supervisor (:meth:`Supervisor.add`,
:meth:`Supervisor.remove`, from any thread): the loop takes them in or shuts
them down between two steps, and the other plugins never notice. ``sdplite
serve`` reloads its configuration this way.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from .dirwatch import DirWatch
from .lifecycle import STOP_GRACE, Controller
from .logtext import cut
from .serving import PluginError
from .status_file import StatusFile
from .wire.shutdown import Shutdown

__all__ = ["Supervisor", "run", "Runnable"]

log = logging.getLogger("sdplite")

POLL_WITH_INOTIFY = 1.0
POLL_WITHOUT_INOTIFY = 0.1


class Runnable(Protocol):
    """A plugin of any kind: it owns the controller that runs its life."""

    @property
    def controller(self) -> Controller: ...


class Supervisor:
    """Schedules the controllers of some plugins in one ``select`` loop (see the module docstring);
    :meth:`add` and :meth:`remove` change the set while it runs."""

    def __init__(self, plugins: Sequence[Runnable], status_file: Optional[str] = None) -> None:
        if not plugins:
            raise ValueError("give at least one plugin to run")
        controllers = [p.controller for p in plugins]
        paths = [path for c in controllers for path in c.socket_paths()]
        shared = sorted({path for path in paths if paths.count(path) > 1})
        if shared:
            raise ValueError(
                f"two plugins share the socket path(s) {shared}: give each plugin its own socket name"
            )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.controllers: list[Controller] = []
        try:
            for controller in controllers:
                controller.attach(self.wake)
                self.controllers.append(controller)
        except BaseException:
            for controller in self.controllers:
                controller.shutdown(Shutdown(STOP_GRACE))
            self._close()
            raise
        self._stop = threading.Event()
        #: The deadline of the stop, fixed when it was asked for (see stop()).
        self._shutdown: Optional[Shutdown] = None
        dirs = sorted({d for c in controllers for d in c.directories()})
        self._watches = {d: DirWatch(d) for d in dirs}
        self._closed = False
        self._changes: list[tuple[Runnable, Optional[threading.Event]]] = []
        self._changes_lock = threading.Lock()
        self._finished = False
        path = status_file or os.environ.get("SDPLITE_STATUS_FILE")
        self._status = StatusFile(path) if path else None

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    def stop(self) -> None:
        """Stop (any thread, or a signal handler): :meth:`run` returns within ``STOP_GRACE``.

        The grace counts from now, even if the loop's thread is busy with a
        restart's stop: its waits end by their own deadline, and what is left
        of this stop's grace is all the stop gets."""
        if self._shutdown is None:
            self._shutdown = Shutdown(STOP_GRACE)
        self._stop.set()
        for controller in list(self.controllers):
            controller.interrupt()
        self.wake()

    def add(self, plugin: Runnable) -> None:
        """Serve one more plugin, from any thread; returns at once (see ``plugin.wait_registered``).

        Raises ValueError if a plugin of this supervisor (or one being added)
        has the same socket path, RuntimeError once :meth:`run` has returned.
        """
        paths = set(plugin.controller.socket_paths())
        with self._changes_lock:
            if self._finished:
                raise RuntimeError("this supervisor has stopped: start a new one")
            removing = {id(p.controller) for p, done in self._changes if done is not None}
            taken = {path for c in self.controllers if id(c) not in removing for path in c.socket_paths()}
            taken.update(
                path for p, done in self._changes if done is None for path in p.controller.socket_paths()
            )
            if paths & taken:
                raise ValueError(f"a plugin of this process already serves {sorted(paths & taken)}")
            self._changes.append((plugin, None))
        self.wake()

    def remove(self, plugin: Runnable, timeout: float = 30.0) -> bool:
        """Stop one plugin (its streams end, its socket goes), from any thread but the loop's.

        Returns True once it has shut down, False if ``timeout`` passed first.
        """
        done = threading.Event()
        with self._changes_lock:
            if self._finished:
                return True  # every plugin was shut down when the loop ended
            self._changes.append((plugin, done))
        self.wake()
        return done.wait(timeout)

    def _apply_changes(self) -> None:
        if not self._changes:  # the usual case: no lock taken
            return
        with self._changes_lock:
            changes, self._changes = self._changes, []
        for plugin, done in changes:
            controller = plugin.controller
            if done is None:
                controller.attach(self.wake)
                self.controllers.append(controller)
                controller.start_features()
                for directory in controller.directories():
                    if directory not in self._watches:
                        self._watches[directory] = DirWatch(directory)
                continue
            if controller in self.controllers:
                self.controllers.remove(controller)
                shutdown = Shutdown(STOP_GRACE)
                controller.shutdown(shutdown)
                controller.stop_features(shutdown)
                shutdown.report(log, f"{controller.name}: remove")
            done.set()

    def restart_all(self, reason: str) -> None:
        for controller in self.controllers:
            controller.request_restart(reason)

    def run(self) -> None:
        """Serve until :meth:`stop`; raise :class:`PluginError` if a plugin cannot run."""
        try:
            for controller in self.controllers:
                controller.start_features()
            while not self._stop.is_set():
                self._apply_changes()
                now = time.monotonic()
                wake_at = min((c.step(now) for c in self.controllers), default=now + POLL_WITH_INOTIFY)
                if self._status is not None:
                    self._status.update([c.status() for c in self.controllers])
                failed = [c for c in self.controllers if c.fatal]
                if failed:
                    raise PluginError("; ".join(c.fatal or "" for c in failed))
                self._sleep(max(0.0, wake_at - time.monotonic()))
        finally:
            with self._changes_lock:
                self._finished = True
                pending, self._changes = self._changes, []  # adds never started; removes stop below
            shutdown = self._shutdown or Shutdown(STOP_GRACE)  # one deadline for every plugin
            for controller in self.controllers:
                controller.shutdown(shutdown)
            for controller in self.controllers:
                controller.stop_features(shutdown)
            shutdown.report(log, "stop")
            if self._status is not None:
                self._status.remove()
            self._close()
            for _plugin, done in pending:
                if done is not None:
                    done.set()
            log.info("stopped: %s", ", ".join(cut(c.name) for c in self.controllers))

    def _sleep(self, timeout: float) -> None:
        """Wait for a wake-up, a directory change or a connection to accept."""
        listening = {s.fileno(): s for c in self.controllers for s in c.listeners()}
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
            if watch.fileno() in ready:
                names = watch.drain()
                for controller in self.controllers:
                    if directory in controller.directories():
                        controller.dir_changed(directory, names)

    def _close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for watch in getattr(self, "_watches", {}).values():
            watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def run(*plugins: Runnable) -> None:
    """Serve these plugins until SIGTERM or SIGINT; SIGHUP restarts them all.

    A plugin is a :class:`DevicePlugin`, or any object with a ``controller``
    (docs/design.md, "A plugin's life").

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

    def __init__(self, plugins: Sequence[Runnable]) -> None:
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
