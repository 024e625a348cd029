"""One DRA driver's life under the supervisor: serve, register through the plugin watcher, start over.

The supervisor (:mod:`sdplite.supervisor`) drives :class:`DRAController`
through :meth:`~DRAController.step`, as it drives a device plugin's
controller, and accepts the service socket's connections. The order is the
kubelet's (docs/design.md, "Dynamic Resource Allocation"): the service
socket serves before the registration socket appears (the kubelet connects
to the service as soon as it has registered us); on a restart the
registration socket goes first, so the kubelet deregisters before the
service stops. A restart is due when either socket is removed or replaced,
or on request (SIGHUP). Every ``HEALTH_RESEND`` seconds the health streams
get the current health again, so the kubelet never lets it go stale.

Reused, not copied, from the device-plugin side: the transport server,
:func:`~sdplite.lifecycle.clear_stale_socket` and
:func:`~sdplite.registration.plugin_watcher_methods`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional, Protocol

from ..api import paths
from ..lifecycle import PluginError, clear_stale_socket
from ..logtext import cut
from ..registration import plugin_watcher_methods
from ..wire import Server
from ..wire.shutdown import Shutdown
from .devices import DeviceTable
from .driver import Driver
from .service import advertised_versions, dra_methods, health_methods

__all__ = ["DRAController", "HEALTH_RESEND"]

log = logging.getLogger("sdplite.dra")

#: Re-send health this often: the kubelet turns a device Unknown after 30 s without a report.
HEALTH_RESEND = 10.0
#: How long a restart (SIGHUP, a socket gone) gives calls in flight.
RESTART_GRACE = 1.0


class DriverParts(Protocol):
    """What the controller uses of a :class:`~.plugin.DRAPlugin` (named here, not imported:
    the plugin module imports this one)."""

    driver_name: str
    socket_path: str  # the registration socket
    service_path: str
    data_dir: str
    health: bool
    server_options: dict[str, Any]
    state: DeviceTable
    driver: Driver


class DRAController:
    def __init__(self, plugin: DriverParts, wake: Callable[[], None]) -> None:
        self.plugin = plugin
        self._wake = wake
        #: The service socket's server (the supervisor accepts its connections).
        self.server: Optional[Server] = None
        self._registrar: Optional[Server] = None
        self.registered = threading.Event()
        self.fatal: Optional[str] = None
        self._lock = threading.Lock()
        self._restart_reason: Optional[str] = None
        self._next_health = 0.0
        self._dir_missing_logged = False
        self._interrupted = False

    # -- requests from other threads -------------------------------------------------

    def request_restart(self, reason: str) -> None:
        with self._lock:
            if self._restart_reason is None:
                self._restart_reason = reason
        self._wake()

    def request_register(self) -> None:
        """The plugin watcher comes to us: nothing to do."""

    def interrupt(self) -> None:
        """The process is stopping: start nothing new (any thread)."""
        self._interrupted = True

    # -- the supervisor's step ---------------------------------------------------------

    def step(self, now: float) -> float:
        if self.fatal or self._interrupted:
            return float("inf")
        reason = self._restart_due()
        if reason is not None and self.server is not None:
            log.info("%s: restarting: %s", self.plugin.driver_name, reason)
            self._stop_servers()
        if self.server is None and not self._start_servers():
            return now + 0.5
        if now >= self._next_health:
            self.plugin.state.refresh()
            self._next_health = now + HEALTH_RESEND
        return self._next_health

    def _restart_due(self) -> Optional[str]:
        with self._lock:
            reason, self._restart_reason = self._restart_reason, None
        if reason is not None:
            return reason
        for server in (self.server, self._registrar):
            if server is not None and not server.owns_socket():
                return f"our socket {server.path} was removed or replaced"
        return None

    # -- serving -----------------------------------------------------------------------

    def _start_servers(self) -> bool:
        plugin = self.plugin
        registry = os.path.dirname(plugin.socket_path)
        if not os.path.isdir(registry):
            if not self._dir_missing_logged:
                log.warning("%s: waiting for %s to exist", plugin.driver_name, registry)
                self._dir_missing_logged = True
            return False
        self._dir_missing_logged = False
        try:
            os.makedirs(plugin.data_dir, exist_ok=True)
            clear_stale_socket(plugin.service_path)
            clear_stale_socket(plugin.socket_path)
            # Health is served even when not advertised: 1.36 kubelets open the stream anyway.
            methods = dra_methods(plugin.driver) + health_methods(plugin.state)
            service = Server(plugin.service_path, methods, **plugin.server_options)
            service.start(accept_thread=False)  # the supervisor accepts
        except PluginError as exc:
            self.fatal = str(exc)
            log.error("%s: %s", plugin.driver_name, exc)
            return False
        except OSError as exc:
            log.error("%s: cannot serve on %s: %s", plugin.driver_name, plugin.service_path, exc)
            return False
        registrar = Server(
            plugin.socket_path,
            plugin_watcher_methods(
                plugin.driver_name,
                self._watcher_status,
                plugin_type=paths.DRA_PLUGIN_TYPE,
                endpoint=plugin.service_path,
                versions=advertised_versions(plugin.health),
            ),
        )
        try:
            registrar.start()  # its own accept thread: the supervisor watches one socket per plugin
        except OSError as exc:
            log.error("%s: cannot serve on %s: %s", plugin.driver_name, plugin.socket_path, exc)
            service.stop(grace=0)
            return False
        self.server, self._registrar = service, registrar
        log.info(
            "%s: serving DRA on %s, registration socket %s",
            plugin.driver_name,
            plugin.service_path,
            plugin.socket_path,
        )
        return True

    def _stop_servers(self, shutdown: Optional[Shutdown] = None) -> None:
        shutdown = shutdown or Shutdown(RESTART_GRACE)
        self.registered.clear()
        registrar, self._registrar = self._registrar, None
        if registrar is not None:
            registrar.stop(shutdown=shutdown)  # the kubelet deregisters us when this socket goes
        self.plugin.state.end_streams()
        server, self.server = self.server, None
        if server is not None:
            server.stop(shutdown=shutdown)

    def _watcher_status(self, registered: bool, error: str) -> None:
        """NotifyRegistrationStatus from the kubelet's plugin watcher."""
        name = self.plugin.driver_name
        if registered:
            self.registered.set()
            log.info("%s: registered with the kubelet's plugin watcher (%s)", name, self.plugin.socket_path)
        else:
            self.registered.clear()
            log.error("%s: the kubelet refused the DRA driver: %s", name, cut(error))

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good by ``shutdown``'s deadline: the registration socket first, then the
        service; both files removed. A Prepare hook still running then is named in
        ``shutdown`` and abandoned (daemon threads). The slice publisher is the plugin's
        feature: the supervisor stops it after this (:meth:`DRAPlugin.stop_features`).
        """
        self._interrupted = True
        self._stop_servers(shutdown)
