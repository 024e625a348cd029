"""The kubelet's DRA side, emulated: what it does to DRA drivers, without a node.

Built on sdplite's own client. :class:`DraKubeletEmulator` watches a
plugins_registry directory as the kubelet's plugin watcher does (docs/design.md,
"Dynamic Resource Allocation"): each new socket is asked GetInfo, must be of
type ``DRAPlugin`` and name a DRAPlugin version the kubelet knows (the first
in the plugin's order wins), its endpoint is connected and the outcome
notified; when the driver advertises DRAResourceHealth (v1 preferred) the
health stream is held open. A caller then does what pod sync does
(:meth:`~DraKubeletEmulator.prepare`, :meth:`~DraKubeletEmulator.unprepare`),
and :meth:`~DraKubeletEmulator.restart` what a kubelet restart does (the
sockets stay; every driver registers again).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ..api import paths
from ..api import pluginregistration_pb2 as reg
from ..wire import Channel, GrpcError, StreamingCall

__all__ = ["DraKubeletEmulator", "DraDriver", "KNOWN_VERSIONS", "PREPARE_TIMEOUT"]

log = logging.getLogger("sdplite.testing")

#: What this kubelet knows, as plugins advertise it -> the API version used.
KNOWN_VERSIONS = {paths.DRA_V1_VERSION: "v1", paths.DRA_V1BETA1_VERSION: "v1beta1"}
#: The kubelet's deadline for each DRA call.
PREPARE_TIMEOUT = 45.0
POLL = 0.1


class DraDriver:
    """One registered driver instance, as the kubelet's DRA manager keeps it."""

    def __init__(self, name: str, socket: str, endpoint: str, versions: Sequence[str], version: str) -> None:
        self.name = name
        self.socket = socket
        self.endpoint = endpoint
        self.versions = list(versions)
        self.version = version
        self.health_version = ""
        if paths.DRA_HEALTH_V1_SERVICE in versions:
            self.health_version = "v1"
        elif paths.DRA_HEALTH_V1ALPHA1_SERVICE in versions:
            self.health_version = "v1alpha1"
        self.channel: Optional[Channel] = None
        self.stream: Optional[StreamingCall[Any]] = None
        #: device name -> (health: "HEALTHY"/"UNHEALTHY"/"UNKNOWN", message), from the last health message.
        self.health: dict[str, tuple[str, str]] = {}
        self.health_messages = 0

    def __repr__(self) -> str:
        return f"DraDriver({self.name!r}, {self.endpoint!r}, {self.version})"


class DraKubeletEmulator:
    """Watch ``registry_dir`` for DRA drivers; see the module docstring."""

    def __init__(self, registry_dir: str, on_event: Optional[Callable[[str, str, Any], None]] = None) -> None:
        self.registry_dir = registry_dir
        self.on_event = on_event
        #: Driver name -> the newest registered instance.
        self.drivers: dict[str, DraDriver] = {}
        self.registrations: list[DraDriver] = []
        self.refusals: list[str] = []
        self._by_socket: dict[str, tuple[tuple[int, int], DraDriver]] = {}
        self._failed: dict[str, tuple[int, int]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._health_threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> DraKubeletEmulator:
        os.makedirs(self.registry_dir, mode=0o750, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="emulator-dra-watcher", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> DraKubeletEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """The kubelet stops: every connection closes (health streams end); the sockets stay."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._cond:
            instances = [d for _, d in self._by_socket.values()]
            self._by_socket.clear()
            self._failed.clear()
            self.drivers.clear()
        for driver in instances:
            self._disconnect(driver)
        for thread in self._health_threads:
            thread.join(10)
        self._health_threads.clear()

    def restart(self) -> None:
        """A kubelet restart: connections dropped, then every socket found and registered again."""
        self.stop()
        self.start()

    def _emit(self, kind: str, driver: str, detail: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, driver, detail)

    # -- the plugin watcher --------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            found = self._scan()
            with self._cond:
                gone = [s for s in self._by_socket if self._by_socket[s][0] != found.get(s)]
            for socket in gone:
                self._deregister(socket)
            for socket, file_id in found.items():
                with self._cond:
                    known = socket in self._by_socket or self._failed.get(socket) == file_id
                if not known:
                    self._register(socket, file_id)
            self._stop.wait(POLL)

    def _scan(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        try:
            names = os.listdir(self.registry_dir)
        except OSError:
            return found
        for name in names:
            path = os.path.join(self.registry_dir, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not name.startswith(".") and (st.st_mode & 0o170000) == 0o140000:
                found[path] = (st.st_ino, st.st_ctime_ns)
        return found

    def _register(self, socket: str, file_id: tuple[int, int]) -> None:
        name = socket
        driver: Optional[DraDriver] = None
        try:
            with Channel(socket, connect_timeout=10.0) as channel:
                info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo, timeout=1.0)
                name = info.name
                problem = self._validate(info)
                if problem is None:
                    driver = self._connect(socket, info)
                    problem = (
                        "" if driver is not None else "plugin registration failed: cannot dial the endpoint"
                    )
                status = reg.RegistrationStatus(plugin_registered=not problem, error=problem or "")
                channel.unary(
                    paths.NOTIFY_REGISTRATION_STATUS, status, reg.RegistrationStatusResponse, timeout=5.0
                )
        except GrpcError as exc:
            problem = f"GetInfo or NotifyRegistrationStatus failed at socket {socket}: {exc}"
        with self._cond:
            if problem:
                self._failed[socket] = file_id
                self.refusals.append(problem)
            elif driver is not None:
                self._by_socket[socket] = (file_id, driver)
            self._cond.notify_all()
        self._emit("refused" if problem else "registered", name, problem)

    def _validate(self, info: Any) -> Optional[str]:
        if info.type != paths.DRA_PLUGIN_TYPE:
            return f"RegisterPlugin error -- no handler registered for plugin type: {info.type}"
        if not any(v in KNOWN_VERSIONS for v in info.supported_versions):
            return (
                f"RegisterPlugin error -- plugin validation failed with err: none of services supported by "
                f"the plugin {list(info.supported_versions)} are supported by the kubelet"
            )
        return None

    def _connect(self, socket: str, info: Any) -> Optional[DraDriver]:
        version = next(KNOWN_VERSIONS[v] for v in info.supported_versions if v in KNOWN_VERSIONS)
        endpoint = info.endpoint or socket
        driver = DraDriver(info.name, socket, endpoint, info.supported_versions, version)
        try:
            driver.channel = Channel(endpoint, connect_timeout=10.0)
        except GrpcError:
            return None
        with self._cond:
            self.drivers[driver.name] = driver
            self.registrations.append(driver)
        if driver.health_version:
            thread = threading.Thread(
                target=self._watch_health, args=(driver,), name="emulator-dra-health", daemon=True
            )
            self._health_threads.append(thread)
            thread.start()
        return driver

    def _deregister(self, socket: str) -> None:
        with self._cond:
            _, driver = self._by_socket.pop(socket)
            if self.drivers.get(driver.name) is driver:
                del self.drivers[driver.name]
            self._cond.notify_all()
        self._disconnect(driver)
        self._emit("deregistered", driver.name, socket)

    def _disconnect(self, driver: DraDriver) -> None:
        if driver.stream is not None:
            driver.stream.cancel()
        if driver.channel is not None:
            driver.channel.close()

    def _watch_health(self, driver: DraDriver) -> None:
        if driver.health_version == "v1":
            from ..api import drahealth_v1_pb2 as health
        else:
            from ..api import drahealth_v1alpha1_pb2 as health  # type: ignore[no-redef]
        path = paths.DRA_HEALTH_V1_WATCH if driver.health_version == "v1" else paths.DRA_HEALTH_V1ALPHA1_WATCH
        assert driver.channel is not None
        try:
            driver.stream = driver.channel.server_streaming(
                path, health.NodeWatchResourcesRequest(), health.NodeWatchResourcesResponse
            )
            for message in driver.stream:
                with self._cond:
                    driver.health = {
                        d.device.device_name: (health.HealthStatus.Name(d.health), d.message)
                        for d in message.devices
                    }
                    driver.health_messages += 1
                    self._cond.notify_all()
                self._emit("health", driver.name, dict(driver.health))
        except GrpcError:
            pass
        with self._cond:
            driver.health = {}  # the kubelet forgets a driver's health when its stream ends
            self._cond.notify_all()

    # -- what pod sync does ----------------------------------------------------------

    def _driver(self, name: str) -> DraDriver:
        with self._cond:
            driver = self.drivers.get(name)
        if driver is None or driver.channel is None:
            raise LookupError(f"DRA driver {name} is not registered")
        return driver

    def prepare(self, driver_name: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
        """NodePrepareResources for (namespace, uid, name) claims: {uid: {"devices": [...], "error": str}};
        each device is (request names, pool, device, CDI IDs). GrpcError if the call itself fails."""
        driver = self._driver(driver_name)
        module, path = _dra_module(driver.version, "prepare")
        request = module.NodePrepareResourcesRequest(
            claims=[module.Claim(namespace=n, uid=u, name=c) for n, u, c in claims]
        )
        assert driver.channel is not None
        response = driver.channel.unary(
            path, request, module.NodePrepareResourcesResponse, timeout=PREPARE_TIMEOUT
        )
        return {
            uid: {
                "error": entry.error,
                "devices": [
                    (list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids))
                    for d in entry.devices
                ],
            }
            for uid, entry in response.claims.items()
        }

    def unprepare(self, driver_name: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        """NodeUnprepareResources: {uid: error text, "" on success}."""
        driver = self._driver(driver_name)
        module, path = _dra_module(driver.version, "unprepare")
        request = module.NodeUnprepareResourcesRequest(
            claims=[module.Claim(namespace=n, uid=u, name=c) for n, u, c in claims]
        )
        assert driver.channel is not None
        response = driver.channel.unary(
            path, request, module.NodeUnprepareResourcesResponse, timeout=PREPARE_TIMEOUT
        )
        return {uid: entry.error for uid, entry in response.claims.items()}

    def wait_for_registration(self, driver: str, count: int = 1, timeout: float = 30.0) -> DraDriver:
        """The ``count``-th registration of ``driver`` (AssertionError after ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: sum(1 for d in self.registrations if d.name == driver) >= count, timeout
            ):
                raise AssertionError(
                    f"{driver} did not register {count} time(s) in {timeout}s: {self.refusals}"
                )
            return [d for d in self.registrations if d.name == driver][count - 1]

    def wait_for_health(
        self,
        driver: str,
        predicate: Callable[[dict[str, tuple[str, str]]], bool],
        timeout: float = 30.0,
    ) -> dict[str, tuple[str, str]]:
        """The driver's device health once ``predicate`` holds for it."""

        def ready() -> bool:
            current = self.drivers.get(driver)
            return current is not None and current.health_messages > 0 and predicate(current.health)

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(f"{driver}: health never matched in {timeout}s")
            return dict(self.drivers[driver].health)


def _dra_module(version: str, verb: str) -> tuple[Any, str]:
    if version == "v1":
        from ..api import dra_v1_pb2

        return dra_v1_pb2, paths.DRA_V1_PREPARE if verb == "prepare" else paths.DRA_V1_UNPREPARE
    from ..api import dra_v1beta1_pb2

    return dra_v1beta1_pb2, paths.DRA_V1BETA1_PREPARE if verb == "prepare" else paths.DRA_V1BETA1_UNPREPARE
