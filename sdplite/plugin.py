"""What a plugin author touches: :func:`build` and the :class:`DevicePlugin` it returns."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .api import paths
from .devices import Device, DeviceListError
from .impl import DevicePluginImpl, SimpleImpl
from .lifecycle import Controller, PluginError
from .logtext import cut
from .naming import validate_resource_name, validate_socket_name
from .registration import REGISTER_TIMEOUT
from .service import DeviceState
from .supervisor import BackgroundRunner
from .supervisor import run as run_plugins
from .wire import Server

if TYPE_CHECKING:
    from .replicas import Replicas
    from .wire.shutdown import Shutdown

__all__ = ["build", "DevicePlugin", "DEFAULT_PLUGIN_DIR"]

log = logging.getLogger("sdplite")

DEFAULT_PLUGIN_DIR = paths.DEVICE_PLUGIN_PATH.rstrip("/")
DEFAULT_REGISTRY_DIR = paths.PLUGINS_REGISTRY_PATH.rstrip("/")


class DevicePlugin:
    """One resource served on one socket. Make it with :func:`build`.

    ``run()`` blocks until SIGTERM/SIGINT; ``start()``/``stop()`` run it in
    the background instead. :meth:`publish`, :meth:`set_health` and
    :meth:`rescan` may be called from any thread at any time.
    """

    def __init__(
        self,
        resource_name: str,
        socket_name: str,
        impl: Any,
        plugin_dir: str,
        register_timeout: float = REGISTER_TIMEOUT,
        server_options: Optional[dict[str, Any]] = None,
        registry_dir: Optional[str] = None,
        replicas: Optional[Replicas] = None,
    ) -> None:
        self.resource_name = validate_resource_name(resource_name)
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        #: Set for plugin-watcher registration: the socket lives there and the
        #: kubelet finds it; no Register call, no restart handling needed.
        self.registry_dir = registry_dir
        self.socket_path = validate_socket_name(socket_name, registry_dir or plugin_dir)
        self.kubelet_socket = os.path.join(plugin_dir, paths.KUBELET_SOCKET)
        self.impl = impl
        self.register_timeout = register_timeout
        self.server_options = dict(server_options or {})
        self.state = DeviceState(resource_name, replicas)
        #: Optional features (CDI spec, health checks, metrics): objects with
        #: start() and stop(), run while the plugin runs (see :mod:`sdplite.features`).
        self.features: list[Any] = []
        self._controller: Optional[Controller] = None
        self._runner: Optional[BackgroundRunner] = None
        self._last_error: Optional[str] = None

    def __repr__(self) -> str:
        return f"DevicePlugin({self.resource_name!r}, {self.socket_path!r}, {self.impl!r})"

    # -- running ---------------------------------------------------------------

    def run(self) -> None:
        """Serve, register and survive kubelet restarts until SIGTERM or SIGINT."""
        run_plugins(self)

    def start(self) -> DevicePlugin:
        """Run in a background thread; returns at once (see :meth:`wait_registered`)."""
        if self._runner is not None:
            raise RuntimeError("this plugin is already running")
        self._runner = BackgroundRunner([self])
        return self

    def stop(self) -> None:
        """Stop a plugin started with :meth:`start`: streams end, the socket goes.

        Returns within about a second whatever is going on; user code that
        has not returned by then (an ``allocate``, ``list_and_watch`` or
        ``get_devices`` that hangs) is left on its daemon thread and named in
        one "still running after" WARNING line.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()
            if isinstance(runner.error, PluginError):
                raise runner.error

    def __enter__(self) -> DevicePlugin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def registered(self) -> bool:
        """True while the kubelet has this plugin registered."""
        return self._controller is not None and self._controller.registered.is_set()

    def wait_registered(self, timeout: float = 30.0) -> bool:
        """Block until registered with the kubelet (True) or ``timeout`` passes."""
        controller = self._controller
        if controller is None:
            raise RuntimeError("the plugin is not running: call start() or run() first")
        return controller.registered.wait(timeout)

    @property
    def error(self) -> Optional[str]:
        """Why the plugin stopped on its own (a registration the kubelet refuses), if it did."""
        if self._controller is not None:
            return self._controller.fatal
        return self._last_error

    def restart(self, reason: str = "requested") -> None:
        """Restart the server and register again, as on SIGHUP."""
        if self._controller is not None:
            self._controller.request_restart(reason)

    def _attach(self, controller: Optional[Controller]) -> None:
        if self._controller is not None:
            self._last_error = self._controller.fatal
        self._controller = controller

    # -- devices ---------------------------------------------------------------

    @property
    def devices(self) -> tuple[Device, ...]:
        """The device list the kubelet has been sent (or will be)."""
        return self.state.devices

    def publish(self, devices: Sequence[Any]) -> bool:
        """Replace the device list; every open ListAndWatch gets it if it changed.

        The list stands, over server and kubelet restarts, until ``get_devices``
        or ``list_and_watch`` sends a list that differs from its previous one.
        Raises :class:`DeviceListError` (and keeps the old list) for a list the
        kubelet could not use.
        """
        return self.state.publish(devices)

    @property
    def physical_devices(self) -> tuple[Device, ...]:
        """The devices as published (without replicas), with their health and its reason."""
        return self.state.physical_devices

    def set_health(self, device_id: str, healthy: bool, reason: Optional[str] = None) -> bool:
        """Mark one device healthy or unhealthy, saying why, and push the change.

        ``reason`` is logged and kept (``Device.reason``, status file,
        metrics); the kubelet only sees the health. With replicas, give the
        physical device's ID: all its replicas change in one push. The health
        stands, over server and kubelet restarts, until a list from
        ``get_devices`` or ``list_and_watch`` changes this device's health.
        """
        return self.state.set_health(device_id, healthy, reason)

    @property
    def metrics_address(self) -> Optional[tuple[str, int]]:
        """Where the metrics endpoint listens while running (``metrics_port``), else None."""
        for feature in self.features:
            address = getattr(feature, "address", None)
            if address is not None:
                return (address[0], address[1])
        return None

    def start_features(self) -> None:
        """Start the optional features (the supervisor calls this when the plugin starts running)."""
        for feature in self.features:
            feature.start()

    def stop_features(self, shutdown: Optional[Shutdown] = None) -> None:
        """Stop them again, last first (called once the plugin has stopped serving);
        what is still running at ``shutdown``'s deadline is named there."""
        for feature in reversed(self.features):
            try:
                feature.stop(shutdown)
            except Exception:
                log.exception("%s: stopping %r failed", self.resource_name, feature)

    def rescan(self) -> None:
        """Simple mode: re-read ``get_devices`` now rather than at the next interval."""
        if not isinstance(self.impl, SimpleImpl):
            raise TypeError("rescan() is for simple mode; flexible mode sends lists itself")
        if self._controller is not None:
            self._controller.request_scan()

    def _publish_from_impl(self, devices: Any, source: str = "list_and_watch") -> None:
        """A list from ``watch.send`` or ``get_devices``: a bad one is logged and the last good one stays."""
        try:
            self.state.report(devices)
        except DeviceListError as exc:
            if self.state.stats is not None:
                self.state.stats.count("errors", kind="device_list")
            if self.state.has_list:
                outcome = "keeping the last good one"
            else:
                outcome = "no good list yet, so the kubelet sees 0 devices until one comes"
            log.error("%s: %s sent a bad list, %s: %s", self.resource_name, source, outcome, cut(exc))


#: What build() takes: a get_devices callable (simple mode) or an object with
#: list_and_watch (flexible mode). Typed, so a type checker holds a
#: flexible-mode object to :class:`~sdplite.impl.DevicePluginImpl`.
ImplOrCallable = Union[Callable[[], Sequence[Any]], DevicePluginImpl]


def build(
    resource_name: str,
    socket_name: str,
    impl: ImplOrCallable,
    *,
    plugin_dir: Optional[str] = None,
    interval: float = 10.0,
    register_timeout: float = REGISTER_TIMEOUT,
    registration: str = "kubelet",
    registry_dir: Optional[str] = None,
    replicas: Optional[Union[int, Callable[[Device], int]]] = None,
    replica_policy: str = "spread",
    cdi: bool = False,
    cdi_dir: Optional[str] = None,
    health_check: Any = None,
    metrics_port: Optional[int] = None,
    metrics_host: str = "",
    **server_options: Any,
) -> DevicePlugin:
    """Make a device plugin for ``resource_name`` served on ``socket_name``.

    ``impl`` is either a callable returning the devices (simple mode: re-read
    every ``interval`` seconds and on :meth:`DevicePlugin.rescan`) or an
    object with ``list_and_watch`` and the optional hooks described in
    :mod:`sdplite.impl` (flexible mode).

    ``registration`` is how the kubelet learns of the plugin:

    - ``"kubelet"`` (default): serve in ``plugin_dir`` (default
      ``$SDPLITE_PLUGIN_DIR`` or ``/var/lib/kubelet/device-plugins``) and call
      Register on its ``kubelet.sock``; re-register after kubelet restarts.
    - ``"plugins_registry"``: serve in ``registry_dir`` (default
      ``$SDPLITE_REGISTRY_DIR`` or ``/var/lib/kubelet/plugins_registry``), where
      the kubelet's plugin watcher finds the socket, asks GetInfo and connects;
      the kubelet never deletes these sockets, so restarts need nothing.

    Optional features, all off by default (and then free):

    - ``replicas``: advertise each device as this many IDs (``gpu-0::0``,
      ``gpu-0::1``, ...), or a function of the Device giving its count; see
      :mod:`sdplite.replicas`. ``replica_policy`` (``"spread"`` or ``"pack"``)
      is how GetPreferredAllocation chooses replicas.
    - ``cdi=True``: write a CDI spec for the devices into ``cdi_dir`` (default
      ``$SDPLITE_CDI_DIR`` or ``/var/run/cdi``), and name the allocated devices
      in Allocate's ``cdi_devices``; see :mod:`sdplite.cdi`.
    - ``health_check``: a function ``check(device)`` or a
      :class:`sdplite.healthcheck.HealthCheck`, run on every device on a schedule.
    - ``metrics_port``: serve Prometheus metrics and ``/healthz`` on this TCP
      port (``metrics_host``: the address to bind, default all); see :mod:`sdplite.metrics`.

    Further keywords tune the gRPC server (see :class:`sdplite.wire.Server`).
    """
    try:
        inspect.signature(Server).bind(socket_name, **server_options)
    except TypeError as exc:
        raise TypeError(f"build() got a keyword the gRPC server does not take: {exc}") from None
    directory = plugin_dir or os.environ.get("SDPLITE_PLUGIN_DIR") or DEFAULT_PLUGIN_DIR
    if registration not in ("kubelet", "plugins_registry"):
        raise ValueError(f"registration must be 'kubelet' or 'plugins_registry', not {registration!r}")
    registry = None
    if registration == "plugins_registry":
        registry = registry_dir or os.environ.get("SDPLITE_REGISTRY_DIR") or DEFAULT_REGISTRY_DIR
    if hasattr(impl, "list_and_watch"):
        if not callable(impl.list_and_watch):
            raise TypeError("impl.list_and_watch must be a method taking a Watch")
        chosen = impl
    elif callable(impl):
        chosen = SimpleImpl(impl, interval)
    else:
        raise TypeError(
            f"build() takes a get_devices callable or an object with list_and_watch(watch), "
            f"not {type(impl).__name__}"
        )
    replica_map = None
    if replicas is not None:
        from .replicas import Replicas

        replica_map = Replicas(replicas, replica_policy)
    plugin = DevicePlugin(
        resource_name, socket_name, chosen, directory, register_timeout, server_options, registry, replica_map
    )
    if cdi or health_check is not None or metrics_port is not None:
        from . import features

        features.setup(plugin, cdi, cdi_dir, health_check, metrics_port, metrics_host)
    return plugin
