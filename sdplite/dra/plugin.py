"""What a DRA driver author touches: :func:`build` and the :class:`DRAPlugin` it returns.

It mirrors :func:`sdplite.build`: devices as :class:`sdplite.Device` data,
optional hooks, ``run()`` until SIGTERM, ``start()``/``stop()`` in the
background, and :func:`sdplite.run` to serve it beside device plugins.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from ..api import paths
from ..devices import Device
from ..serving import PluginError
from ..supervisor import BackgroundRunner
from ..supervisor import run as run_plugins
from ..wire import Server
from ..wire.socket_file import MAX_UNIX_PATH as MAX_SOCKET_PATH
from .cdi_specs import ClaimSpecs
from .claims import Checkpoint
from .controller import DataDir, DraService, make_controller
from .devices import DeviceTable
from .driver import Driver, PrepareHook, UnprepareHook
from .kube import KubeClient
from .slices import RESOURCE_API, SlicePublisher, validate_driver_name

__all__ = ["DRAPlugin", "build", "socket_paths"]

log = logging.getLogger("sdplite.dra")

DEFAULT_REGISTRY_DIR = paths.PLUGINS_REGISTRY_PATH.rstrip("/")
DEFAULT_PLUGINS_DIR = paths.DRA_PLUGINS_PATH.rstrip("/")


def socket_paths(driver: str, registry_dir: str, data_dir: str, pod_uid: Optional[str]) -> tuple[str, str]:
    """(registration socket, service socket) paths.

    With a pod UID (rolling updates: two pods of the driver at once) each pod
    gets its own pair, ``<driver>-<uid>-reg.sock`` and ``dra-<uid>.sock``, as
    the kubelet expects; reusing one name would let the new pod's start
    deregister the old one. A path over the Unix limit uses a hash of the UID.
    """
    if not pod_uid:
        return os.path.join(registry_dir, f"{driver}-reg.sock"), os.path.join(data_dir, "dra.sock")
    registration = os.path.join(registry_dir, f"{driver}-{pod_uid}-reg.sock")
    service = os.path.join(data_dir, f"dra-{pod_uid}.sock")
    short = hashlib.sha256(pod_uid.encode()).hexdigest()[:12]
    if len(os.fsencode(registration)) > MAX_SOCKET_PATH:
        registration = os.path.join(registry_dir, f"{driver[:40]}-{short}-reg.sock")
    if len(os.fsencode(service)) > MAX_SOCKET_PATH:
        service = os.path.join(data_dir, f"dra-{short}.sock")
    for path in (registration, service):
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path {path!r} is over {MAX_SOCKET_PATH} bytes: use shorter directories")
    return registration, service


class DRAPlugin:
    """One DRA driver on one node. Make it with :func:`build`.

    ``run()`` blocks until SIGTERM/SIGINT; ``start()``/``stop()`` run it in
    the background. :meth:`publish` and :meth:`set_health` may be called from
    any thread at any time.
    """

    #: The plugin-watcher type; the status file and ``sdplite health`` tell kinds apart by it.
    kind = paths.DRA_PLUGIN_TYPE

    def __init__(
        self,
        driver_name: str,
        devices: Sequence[Any],
        prepare: Optional[PrepareHook],
        unprepare: Optional[UnprepareHook],
        *,
        node_name: str,
        kube: Optional[KubeClient],
        registry_dir: str,
        plugin_dir: str,
        pod_uid: Optional[str],
        health: bool,
        cdi: Optional[ClaimSpecs],
        server_options: dict[str, Any],
    ) -> None:
        #: The DRA driver name (``spec.driver`` of its slices, ``driver`` of allocation results).
        self.driver_name = validate_driver_name(driver_name)
        #: Named as a device plugin's, for the supervisor and the status file.
        self.resource_name = driver_name
        #: The node, which is also the name of the driver's device pool.
        self.node_name = node_name
        #: The API-server client, or None (no slices, no claims read).
        self.kube = kube
        #: Whether DRAResourceHealth is advertised.
        self.health = health
        #: ``<plugin_dir>/<driver>``: the service socket and the checkpoint live here.
        self.data_dir = os.path.join(plugin_dir, driver_name)
        self.socket_path, self.service_path = socket_paths(driver_name, registry_dir, self.data_dir, pod_uid)
        #: Where prepared claims' CDI specs go (None: ``cdi=False``).
        self.cdi = cdi
        #: Keywords for the gRPC server (see :class:`sdplite.wire.Server`).
        self.server_options = server_options
        #: The devices, their health and the health streams.
        self.state = DeviceTable(driver_name, pool=node_name)
        self.state.publish(devices)
        #: The claims prepared on this node, kept across restarts.
        self.checkpoint = Checkpoint(os.path.join(self.data_dir, "checkpoint.json"))
        if self.checkpoint.uids():
            log.info(
                "%s: %d claim(s) prepared before this start (checkpoint)",
                driver_name,
                len(self.checkpoint.uids()),
            )
        read_claim = None
        if kube is not None:

            def read_claim(namespace: str, name: str) -> Any:
                # Quoted: names come from the kubelet's request and go into a URL path.
                ns, claim = quote(namespace, safe=""), quote(name, safe="")
                return kube.get(f"{RESOURCE_API}/namespaces/{ns}/resourceclaims/{claim}")

        #: Prepare/unprepare rules (no socket involved).
        self.driver = Driver(driver_name, self.state, self.checkpoint, prepare, unprepare, read_claim, cdi)
        #: Keeps the node's ResourceSlices equal to the devices (None without ``kube``).
        self.publisher: Optional[SlicePublisher] = None
        if kube is not None:
            self.publisher = SlicePublisher(kube, driver_name, node_name, lambda: self.state.devices)
            self.state.add_listener(self.publisher.changed)
        features: list[Any] = [DataDir(self.data_dir)]
        if self.publisher is not None:
            # Started when the run begins, stopped after serving ends; the slices stay
            # (the kubelet deletes them 30 s after the driver is gone, unless a new
            # instance registers, and the Node's deletion removes them).
            features.append(self.publisher)
        service = DraService(driver_name, self.driver, self.state)
        #: Runs this driver's life (serve, register, restart); the supervisor schedules it.
        self.controller = make_controller(
            driver_name, service, self.service_path, self.socket_path, health, server_options, features
        )
        self._runner: Optional[BackgroundRunner] = None

    def __repr__(self) -> str:
        return f"DRAPlugin({self.driver_name!r}, node={self.node_name!r}, {self.service_path!r})"

    # -- running (as DevicePlugin) ---------------------------------------------------------

    def run(self) -> None:
        """Serve, register and publish until SIGTERM or SIGINT."""
        run_plugins(self)

    def start(self) -> DRAPlugin:
        """Run in a background thread; returns at once (see :meth:`wait_registered`)."""
        if self._runner is not None:
            raise RuntimeError("this plugin is already running")
        self._runner = BackgroundRunner([self])
        return self

    def stop(self) -> None:
        """Stop a plugin started with :meth:`start`: sockets removed, slices kept."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()
            if isinstance(runner.error, PluginError):
                raise runner.error

    def __enter__(self) -> DRAPlugin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def registered(self) -> bool:
        """True while the kubelet's plugin watcher has this driver registered."""
        return self.controller.registered.is_set()

    def wait_registered(self, timeout: float = 30.0) -> bool:
        """Block until the kubelet's plugin watcher notified success (True) or ``timeout`` passes."""
        if not self.controller.running:
            raise RuntimeError("the plugin is not running: call start() or run() first")
        return self.controller.registered.wait(timeout)

    def wait_published(self, timeout: float = 30.0) -> bool:
        """Block until the ResourceSlices match the devices (False without API access or on timeout)."""
        return self.publisher is not None and self.publisher.synced.wait(timeout)

    @property
    def error(self) -> Optional[str]:
        """Why the driver stopped on its own (e.g. another process serves its socket), if it did."""
        return self.controller.fatal

    def restart(self, reason: str = "requested") -> None:
        """Serve fresh sockets and register again, as on SIGHUP."""
        if self.controller.running:
            self.controller.request_restart(reason)

    # -- devices -------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[Device, ...]:
        """The current device list."""
        return self.state.devices

    def publish(self, devices: Sequence[Any]) -> bool:
        """Replace the device list: ResourceSlices and health streams follow. DeviceListError if invalid."""
        return self.state.publish(devices)

    def set_health(self, device: str, healthy: bool, message: str = "") -> bool:
        """Mark one device healthy or unhealthy, saying why; the health streams get it at once."""
        return self.state.set_health(device, healthy, message)

    @property
    def prepared_claims(self) -> list[str]:
        """UIDs of the claims prepared on this node (from the checkpoint)."""
        return self.checkpoint.uids()


def build(
    driver_name: str,
    prepare: Optional[PrepareHook] = None,
    unprepare: Optional[UnprepareHook] = None,
    *,
    devices: Union[Sequence[Any], Callable[[], Sequence[Any]]] = (),
    node_name: Optional[str] = None,
    kube: Union[KubeClient, None, str] = "auto",
    registry_dir: Optional[str] = None,
    plugin_dir: Optional[str] = None,
    pod_uid: Optional[str] = None,
    health: bool = True,
    cdi: Union[bool, str] = True,
    **server_options: Any,
) -> DRAPlugin:
    """Make a DRA kubelet plugin for ``driver_name`` (e.g. ``"gpu.example.com"``).

    ``devices`` (Device objects, or a callable returning them) are published
    as the node's ResourceSlices and reported on the health stream.
    ``prepare(claim)`` runs once per claim allocated devices of this driver and
    may return None (containers get each device's own envs, device nodes and
    mounts), one :class:`sdplite.Allocation` for the whole claim, or a dict of
    device name -> Allocation; raising fails that claim only.
    ``unprepare(claim)`` undoes it.

    ``node_name`` defaults to ``$NODE_NAME``; ``kube`` to ``$SDPLITE_KUBE_URL``
    (and ``$SDPLITE_KUBE_TOKEN``) or the pod's service account (None: no API
    server: no slices, and claims cannot be read). ``pod_uid`` (default
    ``$POD_UID``) turns on rolling-update socket names. ``registry_dir`` and
    ``plugin_dir`` default to ``$SDPLITE_REGISTRY_DIR`` /
    ``$SDPLITE_DRA_PLUGIN_DIR`` or the kubelet's directories. ``health=False``
    leaves DRAResourceHealth unadvertised. ``cdi`` (default True) writes a CDI
    spec per prepared claim into ``$SDPLITE_CDI_DIR`` or /var/run/cdi (a str:
    that directory) and returns its CDI IDs to the kubelet; False writes none
    (containers then get only the devices' ``cdi_devices`` names). Further
    keywords tune the gRPC server (see :class:`sdplite.wire.Server`).
    """
    validate_driver_name(driver_name)
    try:
        inspect.signature(Server).bind("x.sock", **server_options)
    except TypeError as exc:
        raise TypeError(f"dra.build() got a keyword the gRPC server does not take: {exc}") from None
    node = node_name or os.environ.get("NODE_NAME")
    if not node:
        raise ValueError(
            "dra.build() needs node_name (or $NODE_NAME, from the downward API): slices are per node"
        )
    client = KubeClient.from_environment() if kube == "auto" else kube
    if client is not None and not isinstance(client, KubeClient):
        raise TypeError(f"kube must be a KubeClient, None or 'auto', not {type(client).__name__}")
    initial = devices() if callable(devices) else devices
    return DRAPlugin(
        driver_name,
        initial,
        prepare,
        unprepare,
        node_name=node,
        kube=client,
        registry_dir=registry_dir or os.environ.get("SDPLITE_REGISTRY_DIR") or DEFAULT_REGISTRY_DIR,
        plugin_dir=plugin_dir or os.environ.get("SDPLITE_DRA_PLUGIN_DIR") or DEFAULT_PLUGINS_DIR,
        pod_uid=pod_uid if pod_uid is not None else os.environ.get("POD_UID"),
        health=health,
        cdi=ClaimSpecs(driver_name, cdi if isinstance(cdi, str) else None) if cdi else None,
        server_options=dict(server_options),
    )
