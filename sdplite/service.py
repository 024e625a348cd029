"""The v1beta1 DevicePlugin service: the five RPCs the kubelet calls.

:class:`DeviceState` holds one plugin's current device list, serialised once
per change, what the plugin's owner told it (``set_health``, ``publish``) and
the open ListAndWatch streams; :func:`device_plugin_methods` turns an
implementation and that state into transport methods;
:class:`DevicePluginService` is what a device plugin's controller serves
(:class:`~.lifecycle.Service`): those methods, the implementation's hooks and
its device feed.

Two sources write the list: the owner (:meth:`DeviceState.publish`,
:meth:`DeviceState.set_health`) and the implementation
(:meth:`DeviceState.report`: ``get_devices()`` or ``watch.send``). The state
outlives every server restart, but ``list_and_watch`` runs again on each one
and sends its first list again, so a reported list that repeats what the
implementation said before must not undo what the owner said since: the last
word about each device wins (docs/guide.md, "Health").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from .api import deviceplugin_pb2 as pb
from .api import paths
from .api.paths import HEALTHY, UNHEALTHY
from .devices import (
    Allocation,
    Device,
    DeviceListError,
    default_allocation,
    encode_device_entry,
    encode_device_list,
    join_device_list,
    normalize_devices,
    split_device_list,
)
from .feed import DeviceFeed
from .hooks import Hooks
from .impl import has_hook
from .logtext import cut, cut_list
from .wire import GrpcError, Method, ResponseStream, ServerContext, StatusCode
from .wire import server_streaming as streaming_method
from .wire import unary as unary_method
from .wire.handlers import status_of
from .wire.shutdown import Shutdown

if TYPE_CHECKING:
    from .replicas import Replicas
    from .stats import Stats

__all__ = ["DeviceState", "DevicePluginService", "plugin_options", "device_plugin_methods"]

log = logging.getLogger("sdplite")


class DeviceState:
    """The devices of one resource and the streams watching them. Thread-safe.

    What was published or reported (the *physical* devices) may differ from
    what the kubelet is sent: with :class:`~sdplite.replicas.Replicas` each
    physical device becomes several replica devices, and a device held
    unhealthy by a failing health check stays so whatever later lists say.
    """

    def __init__(self, resource_name: str, replicas: Optional[Replicas] = None) -> None:
        self.resource_name = resource_name
        self.replicas = replicas
        self._lock = threading.Condition(threading.RLock())
        self._devices: tuple[Device, ...] = ()
        self._physical: tuple[Device, ...] = ()
        self._by_id: dict[str, Device] = {}
        self._encoded = encode_device_list(())
        # Set up by the first health change after a publish: the encoded list
        # cut into one entry per device, and each device's position, so a
        # change re-encodes one device instead of the whole list.
        self._entries: Optional[list[bytes]] = None
        self._positions: dict[str, int] = {}
        self._streams: set[ResponseStream] = set()
        # What the owner said about each device's health (set_health, publish),
        # and why, kept until the implementation reports a different health for it.
        self._told: dict[str, bool] = {}
        self._told_reasons: dict[str, str] = {}
        # The last list the implementation reported, and whether the owner's
        # publish() has replaced it (then it stands until that list changes).
        self._reported: Optional[tuple[Device, ...]] = None
        self._reported_by_id: dict[str, Device] = {}
        self._published = False
        #: True once a good list came in (from the owner or the implementation).
        self.has_list = False
        #: Physical device ID -> why a health check holds it unhealthy.
        self._held: dict[str, str] = {}
        #: Called (lock held) with the physical devices before a changed list
        #: is installed, so a CDI spec names a device before the kubelet sees
        #: it; raising DeviceListError refuses the list.
        self.before_install: Optional[Callable[[tuple[Device, ...]], None]] = None
        #: The CDI names of physical devices, when Allocate should add them.
        self.cdi_names: Optional[Callable[[Sequence[str]], list[str]]] = None
        #: Counters for the metrics endpoint; None (no cost) without one.
        self.stats: Optional[Stats] = None
        #: Bumped on every change; lets a waiter tell an old list from a new one.
        self.version = 0

    @property
    def devices(self) -> tuple[Device, ...]:
        """The devices the kubelet is sent (replicas, if any)."""
        return self._devices

    @property
    def physical_devices(self) -> tuple[Device, ...]:
        """The devices as published or reported, with their current health and reason."""
        return self._physical

    def get(self, device_id: str) -> Optional[Device]:
        return self._by_id.get(device_id)

    def snapshot(self) -> dict[str, Device]:
        return self._by_id

    def publish(self, devices: Any) -> bool:
        """The owner's whole new list; push it to every stream if it changed.

        It stands, health included, until the implementation reports a list
        that differs from its previous one. Raises :class:`DeviceListError`
        for a list the kubelet could not use; the previous list then stays.
        """
        new = normalize_devices(devices)
        with self._lock:
            changed = self._replace_physical(new)
            self._told = {d.id: d.healthy for d in new}
            self._told_reasons = {d.id: d.reason for d in new if d.reason is not None}
            self._published = True
            self.has_list = True
        return changed

    def report(self, devices: Any) -> bool:
        """A list from the implementation (``get_devices()``, ``watch.send``), merged
        with what the owner said; push the result to every stream if it changed.

        A device keeps the health the owner gave it unless this list changes
        that device's health from the implementation's previous list; a list
        equal to the previous one leaves a published list in place. So the
        first list after a restart, the same as before it, undoes nothing.
        Raises :class:`DeviceListError` (and changes nothing) for a bad list.
        """
        new = normalize_devices(devices)
        with self._lock:
            if self._published and new == self._reported:
                return False
            merged, told = self._merge_told(new) if self._told else (new, {})
            changed = self._replace_physical(merged)
            self._told = told
            self._told_reasons = {i: r for i, r in self._told_reasons.items() if i in told}
            self._reported = new
            self._reported_by_id = {d.id: d for d in new}
            self._published = False
            self.has_list = True
        return changed

    def _merge_told(self, new: tuple[Device, ...]) -> tuple[tuple[Device, ...], dict[str, bool]]:
        """``new`` with the owner's health (and reason) where the implementation did
        not change its own, and what the owner said that still stands."""
        told, reasons, before = self._told, self._told_reasons, self._reported_by_id
        kept: dict[str, bool] = {}
        merged = []
        for device in new:
            said = told.get(device.id)
            if said is not None:
                previous = before.get(device.id)
                if previous is not None and previous.healthy == device.healthy:
                    kept[device.id] = said
                    why = reasons.get(device.id)
                    if said != device.healthy or (why is not None and why != device.reason):
                        device = device.with_health(said, why)
            merged.append(device)
        return tuple(merged), kept

    @property
    def told_health(self) -> dict[str, bool]:
        """The health the owner set, per device ID, that the next reported list keeps."""
        with self._lock:
            return dict(self._told)

    def _replace_physical(self, physical: tuple[Device, ...]) -> bool:
        """Install a new physical list (lock held): held verdicts applied, replicas made."""
        if self._held:
            physical = self._hold(physical)
        # Replica IDs are unique: "::" and a number after every physical ID.
        replicas = self.replicas
        advertised = replicas.expand(physical, commit=False) if replicas is not None else physical
        return self._replace(physical, advertised, encode_device_list(advertised))

    def _hold(self, physical: tuple[Device, ...]) -> tuple[Device, ...]:
        held = self._held
        return tuple(d.with_health(False, held[d.id]) if d.id in held and d.healthy else d for d in physical)

    def _replace(self, physical: tuple[Device, ...], devices: tuple[Device, ...], encoded: bytes) -> bool:
        """Install a new list (lock held); push it if the kubelet would see a difference."""
        push = encoded != self._encoded
        # The same encoding can still carry new container data (nodes, envs, mounts):
        # keep it, or the default Allocate would hand out the old.
        if not push and physical == self._physical:
            return False
        if self.before_install is not None:
            self.before_install(physical)
        # Without replicas the by-ID maps of the list are the physical ones.
        plain = self.replicas is None
        old = self._by_id if plain else {d.id: d for d in self._physical}
        if self.replicas is not None:
            self.replicas.commit()
        self._entries = None
        self._positions = {}
        self._physical = physical
        self._install(devices, {d.id: d for d in devices}, encoded, push)
        self._log_changes(old, self._by_id if plain else {d.id: d for d in physical})
        return True

    def set_health(self, device_id: str, healthy: bool, reason: Optional[str] = None) -> bool:
        """Mark one device healthy or unhealthy, saying why; KeyError if there is no such device.

        With replicas, ``device_id`` is the physical device's and all its
        replicas change in one push. Costs one encoding per changed device,
        not the list's. A new ``reason`` with the same health is kept (and
        logged) but not pushed: the kubelet never sees reasons.
        """
        if not isinstance(healthy, bool):
            raise TypeError(f"healthy must be True or False, not {healthy!r}")
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {reason!r}")
        with self._lock:  # changes apply one after another: none is lost
            ids = self._ids_of(device_id)
            befores = [self._by_id[i] for i in ids]
            moved = any(b.healthy != healthy for b in befores)
            self._told[device_id] = healthy
            if reason is None:
                self._told_reasons.pop(device_id, None)
            else:
                self._told_reasons[device_id] = reason
            if not moved and all(b.reason == reason for b in befores):
                return False
            devices = list(self._devices)
            by_id = dict(self._by_id)  # a new dict: snapshot() callers keep theirs
            encoded = self._encoded
            if self._entries is None:
                self._entries = split_device_list(self._encoded)
                self._positions = {d.id: i for i, d in enumerate(self._devices)}
            entries = self._entries
            replaced: list[tuple[int, bytes]] = []  # (index, old entry), to undo a refused change
            for before in befores:
                after = before.with_health(healthy, reason)
                index = self._positions[after.id]
                devices[index] = by_id[after.id] = after
                if moved:
                    replaced.append((index, entries[index]))
                    entries[index] = encode_device_entry(after)
            if moved:
                try:
                    encoded = join_device_list(entries)
                except DeviceListError:
                    for index, entry in replaced:
                        entries[index] = entry
                    raise
            if self.replicas is not None:
                self._physical = tuple(
                    d.with_health(healthy, reason) if d.id == device_id else d for d in self._physical
                )
            self._install(tuple(devices), by_id, encoded, moved)
        log.info(
            "%s: device %s %s %s%s",
            self.resource_name,
            cut(device_id),
            "is now" if moved else "stays",
            HEALTHY if healthy else UNHEALTHY,
            f": {cut(reason)}" if reason else "",
        )
        return True

    def _ids_of(self, device_id: str) -> tuple[str, ...]:
        if self.replicas is not None:
            try:
                return self.replicas.ids_of(device_id)
            except KeyError as exc:
                raise KeyError(f"{exc.args[0]} in {self.resource_name}") from None
        if device_id not in self._by_id:
            raise KeyError(f"no device {device_id!r} in {self.resource_name}")
        return (device_id,)

    def hold(self, device_id: str, reason: Optional[str], release_reason: Optional[str] = None) -> bool:
        """A health check's verdict on a physical device: unhealthy with ``reason``
        (kept through later lists until released), or healthy again (``reason``
        None; the device then says ``release_reason``)."""
        with self._lock:
            if reason is None:
                if self._held.pop(device_id, None) is None:
                    return False
                return self.set_health(device_id, True, release_reason)
            self._held[device_id] = reason
            return self.set_health(device_id, False, reason)

    def with_devices(self, use: Callable[[tuple[Device, ...]], None]) -> None:
        """Call ``use`` with the physical devices while no change can come in between."""
        with self._lock:
            use(self._physical)

    def forget(self, device_ids: Any) -> None:
        """Drop held verdicts of devices that are gone."""
        with self._lock:
            for device_id in device_ids:
                self._held.pop(device_id, None)

    def _install(
        self, devices: tuple[Device, ...], by_id: dict[str, Device], encoded: bytes, push: bool = True
    ) -> None:
        """Make a new list current and push it to every stream if ``push`` (lock held)."""
        self._devices = devices
        self._by_id = by_id
        self._encoded = encoded
        if self.replicas is None:
            self._physical = devices
        self.version += 1
        if push:
            for stream in self._streams:
                stream.send(encoded)
        self._lock.notify_all()

    def _log_changes(self, old: Mapping[str, Device], new: Mapping[str, Device]) -> None:
        """One line per device whose health turned (with its reason), one for devices added or removed."""
        for device_id, device in new.items():
            before = old.get(device_id)
            if before is not None and before.healthy != device.healthy:
                why = f": {cut(device.reason)}" if device.reason else ""
                log.info("%s: device %s is now %s%s", self.resource_name, cut(device_id), device.health, why)
        added = len(new.keys() - old.keys())
        removed = len(old.keys() - new.keys())
        if added or removed:
            healthy = sum(1 for d in new.values() if d.healthy)
            log.info(
                "%s: %d devices (%d healthy): %d added, %d removed",
                self.resource_name,
                len(new),
                healthy,
                added,
                removed,
            )

    def wait_for(self, predicate: Callable[[tuple[Device, ...]], bool], timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._devices), timeout)

    # -- streams -----------------------------------------------------------------

    def watch(self, stream: ResponseStream) -> None:
        """Send the current list to a new stream and every later one."""
        with self._lock:
            stream.send(self._encoded)
            self._streams.add(stream)

    def unwatch(self, stream: ResponseStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    def end_streams(self) -> None:
        """End every open stream with OK once its queued list is sent."""
        with self._lock:
            streams, self._streams = self._streams, set()
        for stream in streams:
            stream.end()


def plugin_options(impl: Any, default_preferred: bool = False) -> pb.DevicePluginOptions:
    """Options follow the optional hooks the implementation offers.

    ``default_preferred``: sdplite answers GetPreferredAllocation itself
    (replicas' spread/pack policy) when the implementation does not.
    """
    return pb.DevicePluginOptions(
        pre_start_required=has_hook(impl, "pre_start_container"),
        get_preferred_allocation_available=default_preferred or has_hook(impl, "get_preferred_allocation"),
    )


def _fill_container(
    response: pb.AllocateResponse,
    result: Any,
    state: DeviceState,
    ids: Sequence[str],
    physical: Sequence[str],
) -> None:
    """Add one container's answer to ``response``: the hook's result, or the default.

    ``ids`` are the kubelet's (replica) IDs, ``physical`` the devices behind
    them; with CDI on, their CDI names are added to whatever the answer has.
    """
    if result is None:
        try:
            result = default_allocation(state.snapshot(), ids)
        except LookupError as exc:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, f"{state.resource_name}: {exc}") from None
    if isinstance(result, Allocation):
        container = response.container_responses.add()
        try:
            result.fill(container)
        except (TypeError, ValueError) as exc:
            raise GrpcError(StatusCode.INTERNAL, _bad_allocation(result, exc)) from None
    elif isinstance(result, pb.ContainerAllocateResponse):
        response.container_responses.append(result)
        container = response.container_responses[-1]
    else:
        raise GrpcError(
            StatusCode.INTERNAL,
            f"allocate returned a {type(result).__name__}; return an sdplite.Allocation, "
            f"a ContainerAllocateResponse or None (for the default)",
        )
    if state.cdi_names is not None:
        have = {c.name for c in container.cdi_devices}
        for name in state.cdi_names(physical):
            if name not in have:
                container.cdi_devices.add(name=name)


def _bad_allocation(allocation: Allocation, exc: Exception) -> str:
    """Why an Allocation does not fit the message, found only once filling it failed."""
    for name in ("envs", "annotations"):
        mapping = getattr(allocation, name)
        if not isinstance(mapping, Mapping):
            kind = type(mapping).__name__
            return f"allocate returned an Allocation whose {name} is a {kind}: give a dict of str to str"
        for key, value in mapping.items():
            if not isinstance(key, str) or not isinstance(value, str):
                return (
                    f"allocate returned an Allocation with {name}[{cut(repr(key), 60)}] = "
                    f"{cut(repr(value), 60)}: {name} keys and values must be str (use str(value))"
                )
    return (
        f"allocate returned an Allocation that does not fit a ContainerAllocateResponse "
        f"({type(exc).__name__}: {cut(exc)}): mounts must be sdplite.Mount, nodes sdplite.DeviceNode, "
        f"cdi_devices str"
    )


def _preferred_text(request: pb.PreferredAllocationRequest) -> str:
    """Each container's choice: ``2 of [a,b,c] with [a]``."""
    parts = [
        f"{c.allocation_size} of [{cut_list(c.available_deviceIDs)}]"
        f" with [{cut_list(c.must_include_deviceIDs)}]"
        for c in request.container_requests
    ]
    return cut(" ".join(parts))


def _containers_text(id_lists: Iterable[Iterable[str]]) -> str:
    """The device IDs of each container of a request, for a log line: ``[a,b] [c]``."""
    return cut(" ".join(f"[{cut_list(ids)}]" for ids in id_lists))


def _refusal(exc: BaseException) -> str:
    code, message = status_of(exc)
    return f"{code.name}: {cut(message)}"


def _counted(
    allocate: Callable[[pb.AllocateRequest, ServerContext], pb.AllocateResponse], stats: Stats
) -> Callable[[pb.AllocateRequest, ServerContext], pb.AllocateResponse]:
    """Allocate, timed and counted by result for the metrics endpoint."""

    def counted(request: pb.AllocateRequest, context: ServerContext) -> pb.AllocateResponse:
        started = time.perf_counter()
        try:
            response = allocate(request, context)
        except GrpcError as exc:
            refused = exc.code is StatusCode.INVALID_ARGUMENT
            stats.allocate("refused" if refused else "failed", time.perf_counter() - started)
            stats.count("errors", kind="allocate_refused" if refused else "allocate_failed")
            raise
        except Exception:
            stats.allocate("failed", time.perf_counter() - started)
            stats.count("errors", kind="allocate_failed")
            raise
        stats.allocate("granted", time.perf_counter() - started)
        return response

    return counted


def device_plugin_methods(
    impl: Any, state: DeviceState, on_stream_end: Callable[[ServerContext], None]
) -> list[Method[Any]]:
    """The DevicePlugin service for ``impl``, serving ``state``'s devices.

    Allocate, GetPreferredAllocation and PreStartContainer each log one INFO
    line with the resource, the IDs and the outcome (docs/guide.md, "Logs").
    """
    replicas = state.replicas
    stats = state.stats
    options = plugin_options(impl, default_preferred=replicas is not None)
    name = state.resource_name
    enabled = log.isEnabledFor

    def get_options(request: pb.Empty, context: ServerContext) -> pb.DevicePluginOptions:
        return options

    def list_and_watch(request: pb.Empty, stream: ResponseStream) -> None:
        stream.context.add_done_callback(lambda: _stream_done(stream))
        state.watch(stream)

    def _stream_done(stream: ResponseStream) -> None:
        state.unwatch(stream)
        on_stream_end(stream.context)

    allocate_hook = getattr(impl, "allocate", None) if has_hook(impl, "allocate") else None

    def allocate(request: pb.AllocateRequest, context: ServerContext) -> pb.AllocateResponse:
        containers = request.container_requests
        try:
            if not containers:
                raise GrpcError(StatusCode.INVALID_ARGUMENT, "AllocateRequest has no container requests")
            response = pb.AllocateResponse()
            for container in containers:
                ids = list(container.devices_ids)
                physical = replicas.physical_ids(ids) if replicas is not None else ids
                result = allocate_hook(physical) if allocate_hook is not None else None
                _fill_container(response, result, state, ids, physical)
        except Exception as exc:
            if enabled(logging.INFO):
                ids_text = _containers_text(c.devices_ids for c in containers)
                log.info("%s: Allocate %s refused: %s", name, ids_text, _refusal(exc))
            raise
        if enabled(logging.INFO):
            log.info("%s: Allocate %s granted", name, _containers_text(c.devices_ids for c in containers))
        return response

    preferred_hook = impl.get_preferred_allocation if has_hook(impl, "get_preferred_allocation") else None
    if preferred_hook is None and replicas is not None:
        preferred_hook = replicas.preferred
    pre_start = _pre_start_method(impl, name)

    allocate_method = allocate if stats is None else _counted(allocate, stats)
    methods = [
        unary_method(paths.GET_DEVICE_PLUGIN_OPTIONS, get_options, pb.Empty),
        streaming_method(paths.LIST_AND_WATCH, list_and_watch, pb.Empty, latest_only=True),
        unary_method(paths.ALLOCATE, allocate_method, pb.AllocateRequest),
        unary_method(paths.PRE_START_CONTAINER, pre_start, pb.PreStartContainerRequest),
    ]
    if preferred_hook is not None:
        preferred = _preferred_method(preferred_hook, name)
        methods.append(unary_method(paths.GET_PREFERRED_ALLOCATION, preferred, pb.PreferredAllocationRequest))
    return methods


def _preferred_method(
    preferred_hook: Callable[[list[str], list[str], int], Any], name: str
) -> Callable[[pb.PreferredAllocationRequest, ServerContext], pb.PreferredAllocationResponse]:
    """GetPreferredAllocation through ``preferred_hook``, logged as one INFO line."""
    enabled = log.isEnabledFor

    def preferred(
        request: pb.PreferredAllocationRequest, context: ServerContext
    ) -> pb.PreferredAllocationResponse:
        response = pb.PreferredAllocationResponse()
        chosen: list[list[str]] = []
        try:
            for container in request.container_requests:
                ids = preferred_hook(
                    list(container.available_deviceIDs),
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                )
                if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                    raise GrpcError(
                        StatusCode.INTERNAL,
                        f"get_preferred_allocation returned a {type(ids).__name__}; return a list of IDs",
                    )
                response.container_responses.add(deviceIDs=list(ids))
                chosen.append(list(ids))
        except Exception as exc:
            if enabled(logging.INFO):
                log.info(
                    "%s: GetPreferredAllocation %s refused: %s", name, _preferred_text(request), _refusal(exc)
                )
            raise
        if enabled(logging.INFO):
            log.info(
                "%s: GetPreferredAllocation %s: preferred %s",
                name,
                _preferred_text(request),
                _containers_text(chosen),
            )
        return response

    return preferred


def _pre_start_method(
    impl: Any, name: str
) -> Callable[[pb.PreStartContainerRequest, ServerContext], pb.PreStartContainerResponse]:
    """PreStartContainer through the author's ``pre_start_container`` (if any), logged as one INFO line."""
    enabled = log.isEnabledFor

    def pre_start(
        request: pb.PreStartContainerRequest, context: ServerContext
    ) -> pb.PreStartContainerResponse:
        try:
            if has_hook(impl, "pre_start_container"):
                impl.pre_start_container(list(request.devices_ids))
        except Exception as exc:
            if enabled(logging.INFO):
                ids_text = _containers_text([request.devices_ids])
                log.info("%s: PreStartContainer %s refused: %s", name, ids_text, _refusal(exc))
            raise
        if enabled(logging.INFO):
            log.info("%s: PreStartContainer %s done", name, _containers_text([request.devices_ids]))
        return pb.PreStartContainerResponse()

    return pre_start


#: At most this many unhealthy devices (with their reasons) are listed per plugin in its status.
MAX_LISTED = 100


class DevicePluginService:
    """A device plugin as its controller sees it: the five RPCs, the hooks, the device feed.

    Implements :class:`~.lifecycle.Service`; see docs/design.md, "A plugin's life".
    """

    def __init__(self, impl: Any, state: DeviceState, feed: DeviceFeed) -> None:
        self.name = state.resource_name
        self.impl = impl
        self.state = state
        self.feed = feed
        self.hooks = Hooks(impl, self.name, feed.label)

    def methods(self, stream_ended: Callable[[ServerContext], None]) -> list[Method[Any]]:
        return device_plugin_methods(self.impl, self.state, stream_ended)

    def started(self) -> None:
        self.hooks.refresh()
        self.feed.start()

    def stopping(self) -> None:
        self.feed.wind_down()  # list_and_watch winds down while the server stops
        self.state.end_streams()

    def stopped(self, shutdown: Shutdown) -> None:
        self.feed.stop(shutdown)
        self.hooks.destroy(shutdown)

    def step(self, now: float) -> float:
        return self.feed.step(now)

    @property
    def streams(self) -> int:
        return self.state.stream_count

    def status(self) -> dict[str, Any]:
        state = self.state
        devices = state.devices
        unhealthy = [d for d in state.physical_devices if not d.healthy]
        return {
            "resource": self.name,
            "streams": state.stream_count,
            "devices": len(devices),
            "healthy": sum(1 for d in devices if d.healthy),
            "unhealthy": [
                {"id": cut(d.id), "reason": cut(d.reason) if d.reason else None}
                for d in unhealthy[:MAX_LISTED]
            ],
        }

    def interrupt(self) -> None:
        self.feed.interrupt()
        self.hooks.interrupt()

    def resume(self) -> None:
        self.feed.resume()
        self.hooks.resume()

    def shutdown(self, shutdown: Shutdown) -> None:
        self.feed.shutdown(shutdown)
        self.hooks.join(shutdown)
