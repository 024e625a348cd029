"""The optional features a plugin can run beside its service: CDI spec, health checks, metrics.

:func:`build` imports this module only when one of them is turned on, so a
plugin without them loads none of their code. Each feature is an object with
``start()`` and ``stop()``, started when the plugin starts running and
stopped after it has stopped serving (:meth:`DevicePlugin.start_features`);
each hooks into the plugin's :class:`~sdplite.service.DeviceState` through
one of its attributes (``before_install``, ``cdi_names``, ``stats``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from .devices import Device, DeviceListError
from .logtext import cut

if TYPE_CHECKING:
    from .cdi import SpecFile
    from .healthcheck import HealthCheck
    from .service import DeviceState
    from .wire.shutdown import Shutdown

__all__ = ["CdiSpecFeature", "HealthCheckFeature", "setup"]

log = logging.getLogger("sdplite")


class CdiSpecFeature:
    """Keeps ``state``'s CDI spec file current, names its devices in Allocate, removes it on stop."""

    def __init__(self, state: DeviceState, spec: SpecFile) -> None:
        self.state = state
        self.spec = spec
        state.before_install = self._write
        state.cdi_names = spec.names

    def __repr__(self) -> str:
        return f"CdiSpecFeature({self.spec!r})"

    def _write(self, devices: tuple[Device, ...]) -> None:
        """Before the kubelet sees a list, its CDI spec is on disk (or the list is refused)."""
        try:
            if self.spec.update(devices):
                name, path = self.state.resource_name, self.spec.path
                log.info("%s: wrote CDI spec %s (%d devices)", name, path, len(devices))
        except DeviceListError as exc:  # a CdiError: a device ID CDI cannot take as a name
            raise DeviceListError(f"CDI is on: {exc}") from None
        except OSError as exc:
            # The kubelet still gets the list; Allocate names devices a runtime cannot resolve yet.
            log.error("%s: cannot write CDI spec %s: %s", self.state.resource_name, self.spec.path, cut(exc))
            if self.state.stats is not None:
                self.state.stats.count("errors", kind="cdi_write")

    def start(self) -> None:
        """Write the spec of the current list (again, after a stop removed it)."""
        try:
            self.state.with_devices(self._write)
        except DeviceListError as exc:
            log.error("%s: %s", self.state.resource_name, exc)

    def stop(self, shutdown: Optional[Shutdown] = None) -> None:
        if self.spec.remove():
            log.info("%s: removed CDI spec %s", self.state.resource_name, self.spec.path)


class HealthCheckFeature:
    """Runs a :class:`~sdplite.healthcheck.HealthCheck` on ``state``'s devices while the plugin runs."""

    def __init__(self, state: DeviceState, check: HealthCheck) -> None:
        self.state = state
        self.check = check

    def __repr__(self) -> str:
        return f"HealthCheckFeature({self.check!r})"

    def start(self) -> None:
        self.check.start(self.state)

    def stop(self, shutdown: Optional[Shutdown] = None) -> None:
        self.check.stop(shutdown)


def health_check_of(value: Any) -> Optional[HealthCheck]:
    """A HealthCheck from what ``build(health_check=...)`` was given: one, or a check function."""
    from .healthcheck import HealthCheck

    if value is None or isinstance(value, HealthCheck):
        return value
    return HealthCheck(value)


def setup(
    plugin: Any,
    cdi: bool,
    cdi_dir: Optional[str],
    health_check: Any,
    metrics_port: Optional[int],
    metrics_host: str,
) -> None:
    """Turn on what ``build()`` was asked for on ``plugin`` (a DevicePlugin; typed
    loosely, as this module stays below the plugin in the import order)."""
    state = plugin.state
    if metrics_port is not None:
        from .metrics import MetricsFeature

        plugin.features.append(MetricsFeature(plugin, metrics_port, metrics_host))
    if cdi:
        from .cdi import CdiError, SpecFile

        try:
            spec = SpecFile(plugin.resource_name, cdi_dir)
        except CdiError as exc:
            raise ValueError(f"cdi=True: {exc}") from None
        plugin.features.append(CdiSpecFeature(state, spec))
    check = health_check_of(health_check)
    if check is not None:
        plugin.features.append(HealthCheckFeature(state, check))
