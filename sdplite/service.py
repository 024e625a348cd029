"""The v1beta1 DevicePlugin service: the five RPCs the kubelet calls.

:class:`DeviceState` holds one plugin's current device list, serialised once
per change, what the plugin's owner told it (``set_health``, ``publish``) and
the open ListAndWatch streams; :func:`device_plugin_methods` turns an
implementation and that state into transport methods.

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from .api import deviceplugin_pb2 as pb
from .api import paths
from .devices import (
    Allocation,
    Device,
    DeviceListError,
    check_list_size,
    default_allocation,
    encode_device_list,
    normalize_devices,
)
from .impl import has_hook
from .logtext import cut, cut_list
from .wire import GrpcError, Method, ResponseStream, ServerContext, StatusCode
from .wire import server_streaming as streaming_method
from .wire import unary as unary_method
from .wire.handlers import status_of

__all__ = ["DeviceState", "plugin_options", "device_plugin_methods"]

log = logging.getLogger("sdplite")


class DeviceState:
    """The devices of one resource and the streams watching them. Thread-safe."""

    def __init__(self, resource_name: str) -> None:
        self.resource_name = resource_name
        self._lock = threading.Condition(threading.RLock())
        self._devices: tuple[Device, ...] = ()
        self._by_id: dict[str, Device] = {}
        self._encoded = encode_device_list(())
        # Set up by the first health change after a publish: the encoded list
        # cut into one entry per device, and each device's position, so a
        # change re-encodes one device instead of the whole list.
        self._entries: Optional[list[bytes]] = None
        self._positions: dict[str, int] = {}
        self._streams: set[ResponseStream] = set()
        # What the owner said about each device's health (set_health, publish),
        # kept until the implementation reports a different health for it.
        self._told: dict[str, bool] = {}
        # The last list the implementation reported, and whether the owner's
        # publish() has replaced it (then it stands until that list changes).
        self._reported: Optional[tuple[Device, ...]] = None
        self._reported_by_id: dict[str, Device] = {}
        self._published = False
        #: True once a good list came in (from the owner or the implementation).
        self.has_list = False
        #: Bumped on every change; lets a waiter tell an old list from a new one.
        self.version = 0

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

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
            changed = self._replace(new)
            self._told = {d.id: d.healthy for d in new}
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
            changed = self._replace(merged)
            self._told = told
            self._reported = new
            self._reported_by_id = {d.id: d for d in new}
            self._published = False
            self.has_list = True
        return changed

    def _merge_told(self, new: tuple[Device, ...]) -> tuple[tuple[Device, ...], dict[str, bool]]:
        """``new`` with the owner's health where the implementation did not change its
        own, and what the owner said that still stands."""
        told, before = self._told, self._reported_by_id
        kept: dict[str, bool] = {}
        merged = []
        for device in new:
            said = told.get(device.id)
            if said is not None:
                previous = before.get(device.id)
                if previous is not None and previous.healthy == device.healthy:
                    kept[device.id] = said
                    if said != device.healthy:
                        device = device.with_health(said)
            merged.append(device)
        return tuple(merged), kept

    @property
    def told_health(self) -> dict[str, bool]:
        """The health the owner set, per device ID, that the next reported list keeps."""
        with self._lock:
            return dict(self._told)

    def set_health(self, device_id: str, healthy: bool) -> bool:
        """Mark one device healthy or unhealthy; KeyError if there is no such device.

        Costs one device's encoding, not the list's: the list was checked
        when it was published, and only this device's entry changes.
        """
        with self._lock:  # changes apply one after another: none is lost
            before = self._by_id.get(device_id)
            if before is None:
                raise KeyError(f"no device {device_id!r} in {self.resource_name}")
            if not isinstance(healthy, bool):
                raise TypeError(f"healthy must be True or False, not {healthy!r}")
            if before.healthy == healthy:
                self._told[device_id] = healthy
                return False
            if self._entries is None:
                self._entries, self._positions = _split_entries(self._encoded, self._devices)
            after = before.with_health(healthy)
            index = self._positions[device_id]
            entries = self._entries
            old_entry = entries[index]
            entries[index] = encode_device_list((after,))
            try:
                encoded = _join_entries(entries)
            except DeviceListError:
                entries[index] = old_entry
                raise
            devices = list(self._devices)
            devices[index] = after
            by_id = dict(self._by_id)  # a new dict: snapshot() callers keep theirs
            by_id[device_id] = after
            self._install(tuple(devices), by_id, encoded)
            self._told[device_id] = healthy
        log.info("%s: device %s is now %s", self.resource_name, cut(device_id), after.health)
        return True

    def _replace(self, devices: tuple[Device, ...]) -> bool:
        encoded = encode_device_list(devices)
        with self._lock:
            if encoded == self._encoded:
                return False
            old = self._by_id
            self._entries = None
            self._positions = {}
            self._install(devices, {d.id: d for d in devices}, encoded)
        self._log_changes(old, self._by_id)
        return True

    def _install(self, devices: tuple[Device, ...], by_id: dict[str, Device], encoded: bytes) -> None:
        """Make a new list current and push it to every stream (lock held)."""
        self._devices = devices
        self._by_id = by_id
        self._encoded = encoded
        self.version += 1
        for stream in self._streams:
            stream.send(encoded)
        self._lock.notify_all()

    def _log_changes(self, old: dict[str, Device], new: dict[str, Device]) -> None:
        for device_id, device in new.items():
            before = old.get(device_id)
            if before is not None and before.healthy != device.healthy:
                log.info("%s: device %s is now %s", self.resource_name, cut(device_id), device.health)
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


def _split_entries(encoded: bytes, devices: Sequence[Device]) -> tuple[list[bytes], dict[str, int]]:
    """Cut a serialised ListAndWatchResponse into its ``devices`` entries.

    Every entry is field 1 (tag byte 0x0a), a varint length and a Device:
    exactly what encoding a one-device list gives, so entries can be
    replaced one at a time and joined back into the same bytes.
    """
    entries: list[bytes] = []
    view = memoryview(encoded)
    pos = 0
    end = len(encoded)
    while pos < end:
        start = pos
        pos += 1  # the tag
        length = shift = 0
        while True:
            byte = encoded[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        pos += length
        entries.append(bytes(view[start:pos]))
    if len(entries) != len(devices):  # cannot happen: the list encodes only devices
        raise AssertionError(f"{len(entries)} encoded entries for {len(devices)} devices")
    return entries, {d.id: i for i, d in enumerate(devices)}


def _join_entries(entries: list[bytes]) -> bytes:
    encoded = b"".join(entries)
    check_list_size(len(entries), len(encoded))
    return encoded


def plugin_options(impl: Any) -> pb.DevicePluginOptions:
    """Options follow the optional hooks the implementation offers."""
    return pb.DevicePluginOptions(
        pre_start_required=has_hook(impl, "pre_start_container"),
        get_preferred_allocation_available=has_hook(impl, "get_preferred_allocation"),
    )


def _fill_container(
    response: pb.AllocateResponse, result: Any, state: DeviceState, ids: Sequence[str]
) -> None:
    """Add one container's answer to ``response``: the hook's result, or the default."""
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
    else:
        raise GrpcError(
            StatusCode.INTERNAL,
            f"allocate returned a {type(result).__name__}; return an sdplite.Allocation, "
            f"a ContainerAllocateResponse or None (for the default)",
        )


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


def device_plugin_methods(
    impl: Any, state: DeviceState, on_stream_end: Callable[[ServerContext], None]
) -> list[Method[Any]]:
    """The DevicePlugin service for ``impl``, serving ``state``'s devices.

    Allocate, GetPreferredAllocation and PreStartContainer each log one INFO
    line with the resource, the IDs and the outcome (docs/guide.md, "Logs").
    """
    options = plugin_options(impl)
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
                result = allocate_hook(ids) if allocate_hook is not None else None
                _fill_container(response, result, state, ids)
        except Exception as exc:
            if enabled(logging.INFO):
                ids_text = _containers_text(c.devices_ids for c in containers)
                log.info("%s: Allocate %s refused: %s", name, ids_text, _refusal(exc))
            raise
        if enabled(logging.INFO):
            log.info("%s: Allocate %s granted", name, _containers_text(c.devices_ids for c in containers))
        return response

    def preferred(
        request: pb.PreferredAllocationRequest, context: ServerContext
    ) -> pb.PreferredAllocationResponse:
        response = pb.PreferredAllocationResponse()
        chosen: list[list[str]] = []
        try:
            for container in request.container_requests:
                ids = impl.get_preferred_allocation(
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

    methods = [
        unary_method(paths.GET_DEVICE_PLUGIN_OPTIONS, get_options, pb.Empty),
        streaming_method(paths.LIST_AND_WATCH, list_and_watch, pb.Empty, latest_only=True),
        unary_method(paths.ALLOCATE, allocate, pb.AllocateRequest),
        unary_method(paths.PRE_START_CONTAINER, pre_start, pb.PreStartContainerRequest),
    ]
    if options.get_preferred_allocation_available:
        methods.append(unary_method(paths.GET_PREFERRED_ALLOCATION, preferred, pb.PreferredAllocationRequest))
    return methods
