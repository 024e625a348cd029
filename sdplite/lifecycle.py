"""One plugin's life: serve, register, notice kubelet restarts, start over.

A :class:`Controller` is driven by the supervisor thread alone
(:mod:`.supervisor`) through :meth:`Controller.step`; other threads only ask
for a restart and wake the supervisor. The order is the kubelet's
(KUBELET.md 2 and 4): serve first, then Register (the kubelet dials back
before it answers); on a restart end the old streams, ``destroy()``, start a
fresh server, ``refresh()``, register again.

A restart is due when our socket is gone or replaced, when ``kubelet.sock``
is re-created, when the kubelet ends our ListAndWatch stream, or on SIGHUP.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .api.paths import DEVICE_PLUGIN_PATH
from .impl import SimpleImpl, Watch, has_hook
from .logtext import cut, cut_traceback
from .registration import RegisterAttempt, RegisterOutcome, plugin_watcher_methods
from .service import device_plugin_methods, plugin_options
from .wire import Server, ServerContext
from .wire.shutdown import Shutdown

if TYPE_CHECKING:
    from .plugin import DevicePlugin

__all__ = ["Controller", "PluginError"]

log = logging.getLogger("sdplite")

BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
#: Retrying a server that cannot bind its socket (permissions, a read-only or
#: unreal directory): first after this long, doubling up to the cap.
SERVE_RETRY_FIRST = 0.5
SERVE_RETRY_CAP = 30.0
#: How long to wait for a flexible impl's first list before registering.
FIRST_LIST_WAIT = 2.0
#: After the kubelet ends our stream, how long to wait for signs of a kubelet
#: restart (sockets wiped, kubelet.sock re-created) before restarting anyway.
STREAM_LOSS_GRACE = 1.0
#: How long a stop (or the stop half of a restart) waits for calls, streams
#: and user code before it abandons what is left (see wire/shutdown.py).
STOP_GRACE = 1.0
# The two signs of a kubelet restart (it deletes the plugins' sockets, then
# serves a new kubelet.sock), as restart reasons; the metrics count them.
KUBELET_RESTARTED = "kubelet.sock was re-created (kubelet restart)"
SOCKET_GONE = "was removed or replaced"


class PluginError(RuntimeError):
    """The plugin cannot run: the message says why and what to change."""


def _file_id(path: str) -> Optional[tuple[int, int, int]]:
    """Which file is at ``path``: inode numbers are reused at once on ext4, so ctime too."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def clear_stale_socket(path: str) -> None:
    """Remove a leftover socket at ``path``, but only if nobody listens on it.

    Never follows a symlink and never removes anything that is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise PluginError(f"{path} exists and is {kind}: remove it or choose another socket name")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise PluginError(f"cannot tell whether {path} is in use: {exc}") from None
    else:
        raise PluginError(f"another process is serving on {path}: stop it or choose another socket name")
    finally:
        probe.close()
    try:
        os.unlink(path)
        log.info("removed stale socket %s", path)
    except FileNotFoundError:
        pass


def _serve_hint(exc: OSError, directory: str) -> str:
    """What to do about a socket that cannot be bound in ``directory``."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f" (the plugin cannot create files in {directory}: run it as root, as the kubelet's "
            f"directory is root-owned, and mount the host's directory read-write into the container)"
        )
    if exc.errno == errno.ENOENT:
        return f" ({directory} does not take new files: is it the kubelet's device-plugins directory?)"
    return ""


class Controller:
    def __init__(self, plugin: DevicePlugin, wake: Callable[[], None]) -> None:
        self.plugin = plugin
        self._wake = wake
        self.server: Optional[Server] = None
        self.generation = 0
        self.registered = threading.Event()
        self.fatal: Optional[str] = None
        self._restart_reason: Optional[str] = None
        self._lock = threading.Lock()
        self._next_register = 0.0
        self._backoff = BACKOFF_FIRST
        self._kubelet_id: Optional[tuple[int, int, int]] = None
        self._next_scan = 0.0
        self._scan_requested = False
        self._scan_thread: Optional[threading.Thread] = None
        self._scan_done = threading.Event()
        self._scan_done.set()  # no scan running
        self._scan_started = 0.0
        self._scan_hang_logged = False
        self._dir_missing_logged = False
        self._serve_retry = SERVE_RETRY_FIRST
        self._serve_retry_at = 0.0
        self._watch_stop = threading.Event()
        self._watch_thread: Optional[threading.Thread] = None
        self._stopping = False
        self._stream_lost_at: Optional[float] = None
        self._attempt: Optional[RegisterAttempt] = None
        self._attempt_thread: Optional[threading.Thread] = None
        self._attempt_generation = 0
        self._attempt_kubelet_id: Optional[tuple[int, int, int]] = None
        self._interrupted = False  # the process is stopping (set from any thread)
        self._first_list: Optional[threading.Event] = None  # what _wait_first_list waits on

    # -- requests from other threads -------------------------------------------

    def request_restart(self, reason: str) -> None:
        with self._lock:
            if self._restart_reason is None:
                self._restart_reason = reason
        self._wake()

    def request_register(self) -> None:
        """Try to register at once (e.g. kubelet.sock just appeared)."""
        self._next_register = 0.0

    def request_scan(self) -> None:
        self._scan_requested = True
        self._wake()

    def interrupt(self) -> None:
        """The process is stopping: cut short any wait of the supervisor thread (any thread)."""
        self._interrupted = True
        waiting = self._first_list
        if waiting is not None:
            waiting.set()

    # -- the supervisor's step ---------------------------------------------------

    def step(self, now: float) -> float:
        """Do whatever is due; return when to be called again (monotonic time)."""
        if self.fatal or self._interrupted:
            return float("inf")
        reason, recheck_at = self._restart_due(now)
        if reason is not None and self.server is not None:
            log.info("%s: restarting: %s", self.plugin.resource_name, reason)
            self._count_restart(reason)
            shutdown = Shutdown(STOP_GRACE)
            self._stop_server(shutdown)
            shutdown.report(log, f"{self.plugin.resource_name}: restart")
        if self.server is None:
            if now < self._serve_retry_at:
                return self._serve_retry_at
            if not self._start_server(now):
                return now + 0.5 if self._serve_retry_at <= now else self._serve_retry_at
        wake_at = now + 60.0 if recheck_at is None else recheck_at
        if isinstance(self.plugin.impl, SimpleImpl):
            if self._scan_requested or now >= self._next_scan:
                # Cleared before the scan starts, so a request made meanwhile is kept.
                self._scan_requested = False
                if self._scan() is not None:
                    self._next_scan = now + self.plugin.impl.interval
                else:  # the last scan still runs: try again once it returns (it wakes us)
                    self._scan_requested = True
                    wake_at = min(wake_at, now + 5.0)
            wake_at = min(wake_at, self._next_scan)
        self._collect_registration(now)
        if self.plugin.registry_dir:
            return wake_at  # the kubelet's plugin watcher comes to us
        if not self.registered.is_set() and not self.fatal and self._attempt is None:
            if now >= self._next_register:
                self._start_registration()
            else:
                wake_at = min(wake_at, self._next_register)
        return wake_at

    def _restart_due(self, now: float) -> tuple[Optional[str], Optional[float]]:
        """Why the server must restart now (or None), and when to look again."""
        with self._lock:
            reason, self._restart_reason = self._restart_reason, None
        if reason is not None:
            return reason, None
        server = self.server
        if server is None:
            return None, None
        if not server.owns_socket():
            return f"our socket {server.path} {SOCKET_GONE}", None
        if not self.registered.is_set() or self.plugin.registry_dir:
            return None, None  # the plugin watcher needs no restart handling
        current = _file_id(self.plugin.kubelet_socket)
        if current is not None and current != self._kubelet_id:
            return KUBELET_RESTARTED, None
        lost_at = self._stream_lost_at
        if lost_at is not None and current is not None:
            # The kubelet is (still) there but dropped our stream. A restarting
            # kubelet wipes our socket next: give it a moment, to restart once.
            if now - lost_at >= STREAM_LOSS_GRACE:
                return "the kubelet ended our ListAndWatch stream", None
            return None, lost_at + STREAM_LOSS_GRACE
        return None, None

    def _count_restart(self, reason: str) -> None:
        stats = self.plugin.state.stats
        if stats is not None:
            kubelet = reason == KUBELET_RESTARTED or reason.endswith(SOCKET_GONE)
            stats.count("restarts", cause="kubelet" if kubelet else "other")
            if kubelet:
                stats.count("kubelet_restarts")

    # -- serving -----------------------------------------------------------------

    def _start_server(self, now: float) -> bool:
        plugin = self.plugin
        directory = os.path.dirname(plugin.socket_path)
        if not os.path.isdir(directory):
            if os.path.exists(directory):
                self.fatal = (
                    f"{directory} is a file, not a directory: set plugin_dir (or $SDPLITE_PLUGIN_DIR) "
                    f"to the kubelet's device-plugins directory, {DEVICE_PLUGIN_PATH}"
                )
                log.error("%s: %s", plugin.resource_name, self.fatal)
                return False
            if not self._dir_missing_logged:
                log.warning(
                    "%s: waiting for %s to exist (is the kubelet's directory mounted into the container?)",
                    plugin.resource_name,
                    directory,
                )
                self._dir_missing_logged = True
            return False
        self._dir_missing_logged = False
        try:
            clear_stale_socket(plugin.socket_path)
            self.generation += 1
            generation = self.generation
            methods = device_plugin_methods(
                plugin.impl, plugin.state, lambda ctx: self._stream_ended(ctx, generation)
            )
            if plugin.registry_dir:
                methods += plugin_watcher_methods(plugin.resource_name, self._watcher_status)
            server = Server(plugin.socket_path, methods, **plugin.server_options)
            server.start(accept_thread=False)  # the supervisor accepts (one thread fewer)
        except PluginError as exc:
            self.fatal = str(exc)
            log.error("%s: %s", plugin.resource_name, exc)
            return False
        except OSError as exc:
            log.error(
                "%s: cannot serve on %s: %s%s; retrying in %.1fs",
                plugin.resource_name,
                plugin.socket_path,
                exc.strerror or exc,
                _serve_hint(exc, directory),
                self._serve_retry,
            )
            self._serve_retry_at = now + self._serve_retry
            self._serve_retry = min(self._serve_retry * 2, SERVE_RETRY_CAP)
            return False
        self._serve_retry = SERVE_RETRY_FIRST
        self.server = server
        self._call_hook("refresh")
        self._start_watch()
        self._next_register = 0.0
        self._backoff = BACKOFF_FIRST
        return True

    def _stop_server(self, shutdown: Shutdown) -> None:
        self.registered.clear()
        self._stream_lost_at = None
        self._watch_stop.set()  # list_and_watch winds down while the server stops
        self._abandon_registration()
        self.plugin.state.end_streams()
        server, self.server = self.server, None
        if server is not None:
            server.stop(shutdown=shutdown)
        self._stop_watch(shutdown)
        self._call_hook("destroy")

    def _stream_ended(self, context: ServerContext, generation: int) -> None:
        # Only the current server's streams count, and only ends the kubelet caused.
        # A tool such as `sdplite inspect` may watch too: only when no stream is
        # left is the kubelet no longer watching.
        if (
            generation == self.generation
            and context.cancelled()
            and not self._stopping
            and self.plugin.state.stream_count == 0
        ):
            if self.plugin.registry_dir:
                # The plugin watcher re-registers us by itself; until it does,
                # nobody has us registered.
                self.registered.clear()
                return
            # Before Register returns too: the kubelet opens ListAndWatch first.
            server = self.server
            if server is not None and not server.stopping:
                self._stream_lost_at = time.monotonic()
                self._wake()

    # -- the device list ---------------------------------------------------------

    def _scan(self) -> Optional[threading.Event]:
        """Re-read get_devices on a short-lived thread, so one that hangs never
        stalls restart detection; returns an event set when that scan is done,
        or None if the previous scan has not returned yet."""
        impl = self.plugin.impl
        assert isinstance(impl, SimpleImpl)
        if not self._scan_done.is_set():
            if not self._scan_hang_logged:
                log.warning(
                    "%s: get_devices has not returned after %.0fs; keeping the last good list",
                    self.plugin.resource_name,
                    time.monotonic() - self._scan_started,
                )
                self._scan_hang_logged = True
            return None
        done = self._scan_done = threading.Event()

        def scan() -> None:
            try:
                devices = impl.scan(self.plugin.resource_name)
                if devices is not None:
                    self.plugin._publish_from_impl(devices, "get_devices")
            finally:
                done.set()
                self._wake()

        self._scan_started = time.monotonic()
        self._scan_hang_logged = False
        self._scan_thread = threading.Thread(
            target=scan, name=f"sdplite-scan-{self.plugin.socket_name}", daemon=True
        )
        self._scan_thread.start()
        return done

    def _start_watch(self) -> None:
        impl = self.plugin.impl
        if isinstance(impl, SimpleImpl):
            # Register with the real list, not an empty one, if it comes quickly.
            scanning = self._scan()
            if scanning is not None:
                self._wait_first_list(scanning)
            self._next_scan = time.monotonic() + impl.interval
            return
        self._watch_stop = threading.Event()
        watch = Watch(self.plugin._publish_from_impl, self._watch_stop)
        self._watch_thread = threading.Thread(
            target=self._run_watch,
            args=(impl, watch),
            daemon=True,
            name=f"sdplite-list-and-watch-{self.plugin.socket_name}",
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

    def _run_watch(self, impl: Any, watch: Watch) -> None:
        pause = 1.0
        while True:
            try:
                impl.list_and_watch(watch)
                return  # returning is fine: the last list stays
            except Exception as exc:
                log.error(
                    "%s: list_and_watch raised; the last good list stays, calling it again in %.0fs\n%s",
                    self.plugin.resource_name,
                    pause,
                    cut_traceback(exc),
                )
            if watch.wait(pause):
                return
            pause = min(pause * 2, 30.0)

    def _stop_watch(self, shutdown: Shutdown) -> None:
        self._watch_stop.set()
        thread, self._watch_thread = self._watch_thread, None
        shutdown.join(thread, "list_and_watch, which should return once watch.wait() is True")

    # -- registering -------------------------------------------------------------

    def _start_registration(self) -> None:
        plugin = self.plugin
        attempt = RegisterAttempt(
            plugin.kubelet_socket,
            plugin.resource_name,
            plugin.socket_name,
            plugin_options(plugin.impl, default_preferred=plugin.state.replicas is not None),
            timeout=plugin.register_timeout,
        )
        self._attempt = attempt
        self._stream_lost_at = None  # only losses after this attempt began count
        self._attempt_generation = self.generation
        self._attempt_kubelet_id = _file_id(plugin.kubelet_socket)

        def run() -> None:
            attempt.run()
            self._wake()

        self._attempt_thread = threading.Thread(
            target=run, name=f"sdplite-register-{plugin.socket_name}", daemon=True
        )
        self._attempt_thread.start()

    def _abandon_registration(self, wait: float = 0.0) -> None:
        """Close the Register call in progress, if any; its thread ends soon after.

        ``_attempt_thread`` stays set, for :meth:`shutdown` to wait for.
        """
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.close()
        thread = self._attempt_thread
        if thread is not None and wait:
            thread.join(wait)

    def _collect_registration(self, now: float) -> None:
        attempt = self._attempt
        if attempt is None or attempt.result is None:
            return
        self._abandon_registration(wait=1.0)
        plugin = self.plugin
        result = attempt.result
        if self._attempt_generation != self.generation:
            self._next_register = now  # it was for a server that is gone: try again
            return
        stats = plugin.state.stats
        if stats is not None and result.outcome is RegisterOutcome.OK:
            stats.count("registrations")
        elif stats is not None:
            stats.count("errors", kind="register")
        if result.outcome is RegisterOutcome.OK:
            self._kubelet_id = self._attempt_kubelet_id
            self._backoff = BACKOFF_FIRST
            self.registered.set()
            log.info(
                "%s: registered with the kubelet (endpoint %s, %d devices)",
                plugin.resource_name,
                plugin.socket_name,
                len(plugin.state.devices),
            )
            if self._stream_lost_at is not None:
                self._wake()  # the kubelet already dropped the stream it opened
            return
        if result.outcome is RegisterOutcome.FATAL:
            self.fatal = f"the kubelet refused to register {plugin.resource_name}: {cut(result.message)}"
            log.error("%s", self.fatal)
            return
        log.warning(
            "%s: registration failed, retrying in %.1fs: %s",
            plugin.resource_name,
            self._backoff,
            cut(result.message),
        )
        self._next_register = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)

    def _watcher_status(self, registered: bool, error: str) -> None:
        """NotifyRegistrationStatus from the kubelet's plugin watcher."""
        name = self.plugin.resource_name
        if registered:
            self.registered.set()
            log.info("%s: registered with the kubelet's plugin watcher (%s)", name, self.plugin.socket_path)
        else:
            self.registered.clear()
            log.error("%s: the kubelet's plugin watcher refused the plugin: %s", name, cut(error))

    def _call_hook(self, name: str) -> None:
        if has_hook(self.plugin.impl, name):
            try:
                getattr(self.plugin.impl, name)()
            except Exception as exc:
                log.error("%s: %s() raised\n%s", self.plugin.resource_name, name, cut_traceback(exc))

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good by ``shutdown``'s deadline: streams ended, socket removed.

        What user code or the kubelet keeps running past it is named in
        ``shutdown`` and abandoned (daemon threads).
        """
        self._stopping = True
        self.interrupt()
        if self.server is not None:
            self._stop_server(shutdown)
        else:
            self._stop_watch(shutdown)
        self._abandon_registration()
        shutdown.join(self._attempt_thread, "the Register call to the kubelet")
        shutdown.join(self._scan_thread, "get_devices")
