"""A kubelet emulator: what the kubelet does to device plugins, without a node.

Built on sdplite's own client and server. It serves ``Registration`` on
``kubelet.sock`` in a directory and behaves as the kubelet does (docs/design.md,
"Kubelet facts the code relies on"): checks
the version and resource name (with the kubelet's messages), dials the plugin
back, calls GetDevicePluginOptions inside Register, holds ListAndWatch open
and keeps every resource's devices. A caller does what pod admission does
(:meth:`KubeletEmulator.admit`, or the single RPCs), and :meth:`restart` does
what a kubelet restart does to the directory.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..api import deviceplugin_pb2 as pb
from ..api import paths
from ..api import pluginregistration_pb2 as reg
from ..naming import InvalidNameError, validate_resource_name
from ..wire import Channel, GrpcError, Server, StatusCode, StreamingCall, unary

__all__ = ["KubeletEmulator", "Resource", "Admission", "cleanup_plugin_directory"]

log = logging.getLogger("sdplite.testing")

#: ``on_event(kind, resource, detail)``: "registered", "refused", "devices", "disconnected".
EventCallback = Callable[[str, str, Any], None]


@dataclass
class Resource:
    """One registered resource, as the kubelet's device manager keeps it."""

    name: str
    endpoint: str
    options: Any
    channel: Channel
    devices: list[Any] = field(default_factory=list)
    lists_received: int = 0
    connected: bool = True
    allocated: set[str] = field(default_factory=set)
    stream: Optional[StreamingCall[Any]] = None

    @property
    def healthy(self) -> list[str]:
        """IDs of the devices last reported Healthy."""
        return [d.ID for d in self.devices if d.health == paths.HEALTHY]

    @property
    def unhealthy(self) -> list[str]:
        """IDs of the devices last reported with any other health."""
        return [d.ID for d in self.devices if d.health != paths.HEALTHY]

    @property
    def allocatable(self) -> int:
        """Healthy devices while connected; 0 once the stream ended (the kubelet's rule)."""
        return len(self.healthy) if self.connected else 0


@dataclass
class Admission:
    """What admitting one container did: the devices picked and the plugin's answer."""

    device_ids: list[str]
    preferred: Optional[list[str]]
    response: Any  # ContainerAllocateResponse


def cleanup_plugin_directory(directory: str) -> list[str]:
    """Remove every socket in ``directory`` but the checkpoint; return their names, sorted.

    What a restarting kubelet does to the device-plugin directory
    (CleanupPluginDirectory); shared by the emulator and the grpcio stand-ins.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name != paths.CHECKPOINT_FILE and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
            removed.append(name)
    return removed


class KubeletEmulator:
    """Serve ``kubelet.sock`` in ``directory``; see the module docstring.

    >>> with KubeletEmulator(tmpdir) as kubelet:            # doctest: +SKIP
    ...     plugin = build("example.com/x", "x.sock", get_devices, plugin_dir=tmpdir).start()
    ...     kubelet.wait_for_devices("example.com/x", count=2)
    """

    def __init__(
        self,
        directory: str,
        on_event: Optional[EventCallback] = None,
        registry_dir: Optional[str] = None,
    ) -> None:
        self.directory = directory
        #: When set, also act as the kubelet's plugin watcher on this directory.
        self.registry_dir = registry_dir
        self._watcher: Optional[threading.Thread] = None
        self._watcher_stop = threading.Event()
        self.socket = os.path.join(directory, paths.KUBELET_SOCKET)
        self.on_event = on_event
        self.resources: dict[str, Resource] = {}
        self.registrations: list[Any] = []
        self.refusals: list[str] = []
        self._cond = threading.Condition()
        self._server: Optional[Server] = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> KubeletEmulator:
        """Create the directory if needed and serve a fresh kubelet.sock."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._clear_leftover_socket()
        self._server = Server(self.socket, [unary(paths.REGISTER, self._register, pb.RegisterRequest)])
        self._server.start()
        if self.registry_dir is not None:
            os.makedirs(self.registry_dir, mode=0o750, exist_ok=True)
            self._watcher_stop = threading.Event()
            self._watcher = threading.Thread(
                target=self._watch_registry, name="emulator-plugin-watcher", daemon=True
            )
            self._watcher.start()
        return self

    def _clear_leftover_socket(self) -> None:
        """Remove the kubelet.sock of a kubelet that did not stop cleanly; refuse a live one."""
        if not os.path.lexists(self.socket):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.socket)
        except OSError:
            pass  # nobody listens: a leftover
        else:
            raise RuntimeError(
                f"another kubelet is serving on {self.socket}: stop it, or give this one another "
                f"directory (sdplite kubelet --dir DIR)"
            )
        finally:
            probe.close()
        os.unlink(self.socket)
        log.info("removed stale %s, left by a kubelet that did not stop cleanly", self.socket)

    def __enter__(self) -> KubeletEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Disconnect every plugin and stop serving, as a stopping kubelet does."""
        self._watcher_stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
            self._watcher = None
        with self._cond:
            resources = list(self.resources.values())
        for resource in resources:
            resource.channel.close()
        if self._server is not None:
            self._server.stop(grace=0)
            self._server = None
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()

    def cleanup_directory(self) -> list[str]:
        """Remove every socket in the directory except the checkpoint; return their names."""
        return cleanup_plugin_directory(self.directory)

    def restart(self) -> None:
        """A kubelet restart: connections closed, plugin sockets deleted, new kubelet.sock."""
        self.stop()
        self.cleanup_directory()
        self.start()

    # -- Register ----------------------------------------------------------------

    def _refuse(self, resource: str, message: str) -> GrpcError:
        with self._cond:
            self.refusals.append(message)
            self._cond.notify_all()
        self._emit("refused", resource, message)
        return GrpcError(StatusCode.UNKNOWN, message)

    def _register(self, request: Any, context: Any) -> Any:
        name = request.resource_name
        if request.version not in paths.SUPPORTED_VERSIONS:
            raise self._refuse(
                name,
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{paths.VERSION}"]',
            )
        try:
            validate_resource_name(name)
        except InvalidNameError:
            raise self._refuse(name, f'the ResourceName "{name}" is invalid') from None
        target = os.path.join(self.directory, request.endpoint)
        try:
            channel = Channel(target, connect_timeout=10.0)
        except GrpcError:
            raise self._refuse(name, "failed to dial device plugin: context deadline exceeded") from None
        try:
            self._connect(name, request.endpoint, channel, request)
        except GrpcError as exc:
            channel.close()
            raise self._refuse(name, f"failed to get device plugin options: {exc.message}") from None
        return pb.Empty()

    def _connect(self, name: str, endpoint: str, channel: Channel, request: Any) -> Resource:
        """What the device manager does once a plugin is validated: options, then ListAndWatch."""
        options = channel.unary(paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions)
        request.options.CopyFrom(options)
        resource = Resource(name, endpoint, options, channel)
        with self._cond:
            old = self.resources.get(name)
            self.resources[name] = resource
            self.registrations.append(request)
            self._cond.notify_all()
        if old is not None and old.channel is not channel:
            old.channel.close()  # the newest registration wins
        self._emit("registered", name, resource)
        thread = threading.Thread(
            target=self._list_and_watch, args=(resource,), name=f"emulator-law-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return resource

    # -- the plugin watcher (plugins_registry; kubelet pkg/kubelet/pluginmanager) -----

    def _watch_registry(self) -> None:
        """Poll the registry every 0.1 s: new or re-created sockets register, gone ones leave."""
        assert self.registry_dir is not None
        known: dict[str, tuple[int, int]] = {}
        while True:
            current: dict[str, tuple[int, int]] = {}
            for root, _dirs, files in os.walk(self.registry_dir):
                for entry in files:
                    path = os.path.join(root, entry)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if not entry.startswith(".") and stat.S_ISSOCK(st.st_mode):
                        current[path] = (st.st_ino, st.st_mtime_ns)
            for path, ident in current.items():
                if known.get(path) != ident and self._register_from_registry(path):
                    known[path] = ident
            for path in [p for p in known if p not in current]:
                del known[path]
                self._deregister(path)
            if self._watcher_stop.wait(0.1):
                return

    def _register_from_registry(self, path: str) -> bool:
        """Dial, GetInfo (1 s), validate, connect, then NotifyRegistrationStatus (5 s)."""
        try:
            channel = Channel(path, connect_timeout=10.0)
        except GrpcError as exc:
            log.warning("plugin watcher: %s: %s", path, exc)
            return False
        try:
            info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo, timeout=1.0)
        except GrpcError as exc:
            log.warning("plugin watcher: GetInfo on %s: %s", path, exc)
            channel.close()
            return False
        error = ""
        if info.type != paths.DEVICE_PLUGIN_TYPE:
            error = (
                f"RegisterPlugin error -- no handler registered for plugin type: {info.type} at socket {path}"
            )
        elif paths.VERSION not in info.supported_versions:
            versions = "[" + " ".join(info.supported_versions) + "]"
            error = (
                "RegisterPlugin error -- plugin validation failed with err: "
                f"manager version, {paths.VERSION}, is not among plugin supported versions {versions}"
            )
        else:
            try:
                validate_resource_name(info.name)
            except InvalidNameError:
                error = (
                    "RegisterPlugin error -- plugin validation failed with err: invalid name of "
                    f'device plugin socket: the ResourceName "{info.name}" is invalid'
                )
        if not error:
            endpoint = info.endpoint or path
            plugin_channel = channel
            try:
                if endpoint != path:
                    plugin_channel = Channel(endpoint, connect_timeout=10.0)
                request = pb.RegisterRequest(
                    version=paths.VERSION, endpoint=endpoint, resource_name=info.name
                )
                self._connect(info.name, endpoint, plugin_channel, request)
            except GrpcError as exc:
                error = f"failed to connect to device plugin {info.name}: {exc.message}"
        if error:
            self._emit("refused", info.name, error)
            with self._cond:
                self.refusals.append(error)
                self._cond.notify_all()
        try:
            channel.unary(
                paths.NOTIFY_REGISTRATION_STATUS,
                reg.RegistrationStatus(plugin_registered=not error, error=error),
                reg.RegistrationStatusResponse,
                timeout=5.0,
            )
        except GrpcError as exc:
            log.warning("plugin watcher: NotifyRegistrationStatus to %s failed: %s", path, exc)
        if error:
            channel.close()
        return True

    def _deregister(self, path: str) -> None:
        with self._cond:
            gone = [r for r in self.resources.values() if r.endpoint == path]
        for resource in gone:
            resource.channel.close()

    def _list_and_watch(self, resource: Resource) -> None:
        try:
            stream = resource.channel.server_streaming(
                paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse
            )
            resource.stream = stream
            for response in stream:
                with self._cond:
                    resource.devices = list(response.devices)
                    resource.lists_received += 1
                    self._cond.notify_all()
                self._emit("devices", resource.name, resource)
            reason = "ListAndWatch ended"
        except GrpcError as exc:
            reason = f"ListAndWatch failed: {exc}"
        with self._cond:
            resource.connected = False
            self._cond.notify_all()
        resource.channel.close()
        self._emit("disconnected", resource.name, reason)

    def _emit(self, kind: str, resource: str, detail: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, resource, detail)
            except Exception:
                log.exception("on_event callback failed")

    # -- pod admission -----------------------------------------------------------

    def resource(self, name: str) -> Resource:
        """The registered resource ``name``; KeyError if none registered it."""
        with self._cond:
            try:
                return self.resources[name]
            except KeyError:
                raise KeyError(f"no plugin registered {name!r}") from None

    def allocate(self, name: str, *containers: Sequence[str]) -> Any:
        """Call Allocate with one container request per argument; return the response."""
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=list(ids)) for ids in containers]
        )
        return self.resource(name).channel.unary(paths.ALLOCATE, request, pb.AllocateResponse)

    def get_preferred_allocation(
        self, name: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """Call GetPreferredAllocation for one container; return the preferred IDs."""
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self.resource(name).channel.unary(
            paths.GET_PREFERRED_ALLOCATION, request, pb.PreferredAllocationResponse
        )
        return list(response.container_responses[0].deviceIDs) if response.container_responses else []

    def pre_start_container(self, name: str, device_ids: Sequence[str]) -> Any:
        """PreStartContainer with the kubelet's 30 s deadline."""
        return self.resource(name).channel.unary(
            paths.PRE_START_CONTAINER,
            pb.PreStartContainerRequest(devices_ids=list(device_ids)),
            pb.PreStartContainerResponse,
            timeout=paths.PRE_START_CONTAINER_TIMEOUT,
        )

    def admit(self, name: str, count: int) -> Admission:
        """Give one container ``count`` devices, as the kubelet does at pod admission.

        Picks from healthy, unallocated devices (asking GetPreferredAllocation
        when offered, keeping only IDs that are available and filling any
        shortfall itself), then Allocate, then PreStartContainer if required.
        """
        resource = self.resource(name)
        if not resource.connected:
            raise RuntimeError(f"endpoint {name} has been stopped")
        available = [i for i in resource.healthy if i not in resource.allocated]
        if len(available) < count:
            raise RuntimeError(f"requested {count} {name}, only {len(available)} healthy unallocated devices")
        preferred = None
        chosen: list[str] = []
        if resource.options.get_preferred_allocation_available:
            preferred = self.get_preferred_allocation(name, available, [], count)
            chosen = [i for i in preferred if i in available][:count]
        chosen += [i for i in available if i not in chosen][: count - len(chosen)]
        response = self.allocate(name, chosen)
        if not response.container_responses:
            raise RuntimeError("no containers return in allocation response")
        if resource.options.pre_start_required:
            self.pre_start_container(name, chosen)
        resource.allocated.update(chosen)
        return Admission(chosen, preferred, response.container_responses[0])

    # -- waiting -----------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds; TimeoutError naming ``what`` if it does not."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"kubelet emulator: no {what} within {timeout}s")

    def wait_for_registration(self, name: str, count: int = 1, timeout: float = 10.0) -> Resource:
        """Wait for the ``count``-th registration of ``name``."""
        self.wait(
            lambda: sum(r.resource_name == name for r in self.registrations) >= count,
            timeout,
            f"registration #{count} of {name}",
        )
        return self.resource(name)

    def wait_for_devices(
        self,
        name: str,
        count: Optional[int] = None,
        healthy: Optional[int] = None,
        predicate: Optional[Callable[[Resource], bool]] = None,
        timeout: float = 10.0,
    ) -> Resource:
        """Wait until ``name`` reports ``count`` devices / ``healthy`` healthy ones / ``predicate``."""

        def ok() -> bool:
            resource = self.resources.get(name)
            if resource is None or not resource.lists_received or not resource.connected:
                return False
            return (
                (count is None or len(resource.devices) == count)
                and (healthy is None or len(resource.healthy) == healthy)
                and (predicate is None or predicate(resource))
            )

        self.wait(ok, timeout, f"matching device list from {name}")
        return self.resource(name)
