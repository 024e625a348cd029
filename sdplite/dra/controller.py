"""A DRA driver's life, from the same parts as a device plugin's (docs/design.md, "A plugin's life").

:func:`make_controller` composes the shared :class:`~sdplite.lifecycle.Controller`
from two :class:`~sdplite.serving.Serving` parts (the service socket first,
then the registration socket: the kubelet connects to the service as soon
as it has registered us, and on a stop the registration socket goes first),
a :class:`~sdplite.registration.WatcherRegistration` answering GetInfo with
type ``DRAPlugin``, the service endpoint and the DRA versions, a
:class:`~sdplite.restarts.RestartWatch` (restart when either socket is
removed or replaced, or on SIGHUP) and :class:`DraService`, what only a DRA
driver does: its gRPC methods, and a health heartbeat every
``HEALTH_RESEND`` seconds so the kubelet never lets health go stale.
Features run beside it: the data directory, the ResourceSlice publisher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

from ..api import paths
from ..api import pluginregistration_pb2 as reg
from ..lifecycle import Controller, Waker
from ..logtext import cut
from ..registration import WatcherRegistration
from ..restarts import RestartWatch
from ..serving import Serving
from ..wire import Method, ServerContext
from ..wire.shutdown import Shutdown
from .devices import DeviceTable
from .driver import Driver
from .service import advertised_versions, dra_methods, health_methods

__all__ = ["DraService", "DataDir", "make_controller", "HEALTH_RESEND"]

#: Re-send health this often: the kubelet turns a device Unknown after 30 s without a report.
HEALTH_RESEND = 10.0
#: How many unhealthy devices the status file names.
MAX_LISTED = 20


class DraService:
    """What a DRA driver serves (the :class:`~sdplite.lifecycle.Service` of its controller)."""

    def __init__(self, name: str, driver: Driver, table: DeviceTable) -> None:
        self.name = name
        self.driver = driver
        self.table = table
        self._next_health = 0.0

    def methods(self, stream_ended: Callable[[ServerContext], None]) -> list[Method[Any]]:
        # Health is served even when not advertised: 1.36 kubelets open the stream anyway.
        # Its end is no sign of anything (the kubelet re-opens it), so stream_ended is not used.
        return dra_methods(self.driver) + health_methods(self.table)

    def started(self) -> None:
        self._next_health = 0.0

    def stopping(self) -> None:
        self.table.end_streams()

    def stopped(self, shutdown: Shutdown) -> None:
        pass

    def step(self, now: float) -> float:
        if now >= self._next_health:
            self.table.refresh()
            self._next_health = now + HEALTH_RESEND
        return self._next_health

    @property
    def streams(self) -> int:
        return self.table.stream_count

    def status(self) -> dict[str, Any]:
        # No "streams": a DRA driver is called when pods need it, no stream need be open.
        devices = self.table.devices
        unhealthy = [d for d in devices if not d.healthy]
        return {
            "resource": self.name,
            "kind": paths.DRA_PLUGIN_TYPE,
            "devices": len(devices),
            "healthy": len(devices) - len(unhealthy),
            "unhealthy": [
                {"id": cut(d.id), "reason": cut(d.reason) if d.reason else None}
                for d in unhealthy[:MAX_LISTED]
            ],
        }

    def interrupt(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def shutdown(self, shutdown: Shutdown) -> None:
        pass


class DataDir:
    """A feature: the driver's own directory (service socket, checkpoint) exists before serving."""

    def __init__(self, path: str) -> None:
        self.path = path

    def start(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def stop(self, shutdown: Any = None) -> None:
        pass


def make_controller(
    name: str,
    service: DraService,
    service_path: str,
    registration_path: str,
    health: bool,
    server_options: dict[str, Any],
    features: Sequence[Any],
) -> Controller:
    """The controller of one DRA driver (see the module docstring)."""
    info = reg.PluginInfo(
        type=paths.DRA_PLUGIN_TYPE,
        name=name,
        endpoint=service_path,
        supported_versions=advertised_versions(health),
    )
    registry_hint = (
        f"set registry_dir (or $SDPLITE_REGISTRY_DIR) to the kubelet's {paths.PLUGINS_REGISTRY_PATH}"
    )
    servings = [
        Serving(service_path, name, server_options),
        Serving(registration_path, name, directory_hint=registry_hint),
    ]
    return Controller(
        service,
        servings,
        WatcherRegistration(info, registration_path),
        RestartWatch(),  # the plugin watcher finds us again by itself
        Waker(),
        list(features),
    )
