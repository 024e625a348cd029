"""What a plugin author touches: :func:`build` and the :class:`DevicePlugin` it returns."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .api import paths
from .devices import Device
from .feed import DeviceFeed
from .impl import DevicePluginImpl, SimpleImpl
from .lifecycle import Controller, Waker
from .naming import validate_resource_name, validate_socket_name
from .registration import (
    REGISTER_TIMEOUT,
    KubeletRegistration,
    RegisterAttempt,
    Registration,
    WatcherRegistration,
    device_plugin_info,
)
from .restarts import RestartWatch
from .service import DevicePluginService, DeviceState, plugin_options
from .serving import PluginError, Serving
from .supervisor import BackgroundRunner
from .supervisor import run as run_plugins
from .wire import Server

if TYPE_CHECKING:
    from .replicas import Replicas
    from .wire.shutdown import Shutdown

__all__ = ["build", "DevicePlugin", "DEFAULT_PLUGIN_DIR"]

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
        #: Runs this plugin's life (serve, register, restart); the supervisor schedules it.
        self.controller = self._make_controller()
        self._runner: Optional[BackgroundRunner] = None

    def _make_controller(self) -> Controller:
        waker = Waker()
        state = self.state
        self._feed = DeviceFeed(
            self.impl,
            state.report,
            self.resource_name,
            self.socket_name,
            waker,
            has_list=lambda: state.has_list,
            on_bad_list=lambda: self._count("errors", kind="device_list"),
        )
        if self.registry_dir:
            hint = (
                f"set registry_dir (or $SDPLITE_REGISTRY_DIR) to the kubelet's {paths.PLUGINS_REGISTRY_PATH}"
            )
        else:
            hint = (
                f"set plugin_dir (or $SDPLITE_PLUGIN_DIR) to the kubelet's device-plugins directory, "
                f"{paths.DEVICE_PLUGIN_PATH}"
            )
        serving = Serving(self.socket_path, self.resource_name, self.server_options, directory_hint=hint)
        registration: Registration
        if self.registry_dir:
            restarts = RestartWatch()  # the plugin watcher finds us again by itself
            registration = WatcherRegistration(device_plugin_info(self.resource_name), self.socket_path)
        else:
            restarts = RestartWatch(self.kubelet_socket)
            registration = KubeletRegistration(
                self.resource_name,
                self.socket_name,
                self.kubelet_socket,
                self._register_attempt,
                waker,
                on_attempt=restarts.register_started,
                detail=lambda: f"{len(state.devices)} devices",
                stats=lambda: state.stats,
            )
        service = DevicePluginService(self.impl, state, self._feed)
        return Controller(
            service, [serving], registration, restarts, waker, self.features, lambda: state.stats
        )

    def _count(self, name: str, **labels: str) -> None:
        stats = self.state.stats
        if stats is not None:
            stats.count(name, **labels)

    def _register_attempt(self) -> RegisterAttempt:
        return RegisterAttempt(
            self.kubelet_socket,
            self.resource_name,
            self.socket_name,
            plugin_options(self.impl, default_preferred=self.state.replicas is not None),
            timeout=self.register_timeout,
        )

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
        return self.controller.registered.is_set()

    def wait_registered(self, timeout: float = 30.0) -> bool:
        """Block until registered with the kubelet (True) or ``timeout`` passes."""
        if not self.controller.running:
            raise RuntimeError("the plugin is not running: call start() or run() first")
        return self.controller.registered.wait(timeout)

    @property
    def error(self) -> Optional[str]:
        """Why the plugin stopped on its own (a registration the kubelet refuses), if it did."""
        return self.controller.fatal

    def restart(self, reason: str = "requested") -> None:
        """Restart the server and register again, as on SIGHUP."""
        if self.controller.running:
            self.controller.request_restart(reason)

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
        self.controller.start_features()

    def stop_features(self, shutdown: Optional[Shutdown] = None) -> None:
        """Stop them again, last first (called once the plugin has stopped serving);
        what is still running at ``shutdown``'s deadline is named there."""
        self.controller.stop_features(shutdown)

    def rescan(self) -> None:
        """Simple mode: re-read ``get_devices`` now rather than at the next interval."""
        if not isinstance(self.impl, SimpleImpl):
            raise TypeError("rescan() is for simple mode; flexible mode sends lists itself")
        if self.controller.running:
            self._feed.request_scan()


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
