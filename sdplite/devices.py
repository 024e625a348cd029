"""Devices as data: what a node has and what a container that gets one needs.

A :class:`Device` carries its ID, health, NUMA nodes and everything the
default Allocate hands to a container (device nodes, mounts, env vars,
annotations, CDI names). Protobuf ``Device`` messages are accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .api import deviceplugin_pb2 as pb
from .api.paths import HEALTHY, UNHEALTHY
from .logtext import cut
from .wire.framing import DEFAULT_MAX_MESSAGE, MESSAGE_PREFIX_BYTES

__all__ = [
    "Device",
    "DeviceNode",
    "Mount",
    "Allocation",
    "DeviceListError",
    "MAX_LIST_BYTES",
    "normalize_devices",
    "encode_device_list",
    "encode_device_entry",
    "split_device_list",
    "join_device_list",
    "check_list_size",
    "default_allocation",
]

#: The kubelet's receive limit, which a ListAndWatch message must fit with its gRPC prefix.
MAX_LIST_BYTES = DEFAULT_MAX_MESSAGE - MESSAGE_PREFIX_BYTES


class DeviceListError(ValueError):
    """A device list the kubelet could not use; the message says what to fix."""


# The classes below are frozen dataclasses, but with hand-written __init__,
# __repr__ and __eq__: @dataclass builds those by compiling source code,
# which made up most of this module's import time, and the generated
# __init__ of Device (with __post_init__) is about twice as slow on a long list.


class _Factory:
    """The default of a field that gets a new empty dict: shown as ``<factory>``, like a dataclass's."""

    def __repr__(self) -> str:
        return "<factory>"

    def __bool__(self) -> bool:
        return False  # reads as an empty mapping


_NEW_DICT: Any = _Factory()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, name) for name in self._FIELDS])


def _eq(self: Any, other: object) -> Any:
    """What ``@dataclass(eq=True)`` generates: same class, equal fields (else NotImplemented)."""
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _hash(self: Any) -> int:
    """What ``@dataclass(frozen=True)`` generates: the hash of the fields."""
    return hash(_values(self))


def _repr(self: Any) -> str:
    """What ``@dataclass(repr=True)`` generates."""
    fields = ", ".join([f"{name}={getattr(self, name)!r}" for name in self._FIELDS])
    return f"{type(self).__qualname__}({fields})"


@dataclass(init=False, repr=False, eq=False, frozen=True)
class DeviceNode:
    """A device node to create in the container (``DeviceSpec``)."""

    host_path: str
    container_path: Optional[str] = None  # defaults to host_path
    permissions: str = "rw"  # any of r, w, m

    _FIELDS = ("host_path", "container_path", "permissions")
    __eq__ = _eq
    __hash__ = _hash
    __repr__ = _repr

    def __init__(self, host_path: str, container_path: Optional[str] = None, permissions: str = "rw") -> None:
        set_ = object.__setattr__
        set_(self, "host_path", host_path)
        set_(self, "container_path", container_path)
        set_(self, "permissions", permissions)

    def to_proto(self) -> pb.DeviceSpec:
        return pb.DeviceSpec(
            host_path=self.host_path,
            container_path=self.container_path or self.host_path,
            permissions=self.permissions,
        )


@dataclass(init=False, repr=False, eq=False, frozen=True)
class Mount:
    """A host path to mount into the container."""

    host_path: str
    container_path: Optional[str] = None  # defaults to host_path
    read_only: bool = True

    _FIELDS = ("host_path", "container_path", "read_only")
    __eq__ = _eq
    __hash__ = _hash
    __repr__ = _repr

    def __init__(self, host_path: str, container_path: Optional[str] = None, read_only: bool = True) -> None:
        set_ = object.__setattr__
        set_(self, "host_path", host_path)
        set_(self, "container_path", container_path)
        set_(self, "read_only", read_only)

    def to_proto(self) -> pb.Mount:
        return pb.Mount(
            host_path=self.host_path,
            container_path=self.container_path or self.host_path,
            read_only=self.read_only,
        )


def _freeze(mapping: Optional[Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((mapping or {}).items()))


@dataclass(init=False, repr=False, eq=False, frozen=True)
class Device:
    """One device as the kubelet sees it, plus what a container that gets it needs.

    For example ``Device("disk-0", numa_nodes=[0], nodes=[DeviceNode("/dev/sdb")],
    envs={"DISK": "sdb"})``: healthy, on NUMA node 0, and a container that gets
    it sees /dev/sdb and DISK=sdb. ``reason`` says why the device has its
    health; the kubelet never sees it (v1beta1 has no field for it), but the
    logs, the status file, ``sdplite inspect`` and the metrics do.

    ``attributes`` and ``capacity`` are for Dynamic Resource Allocation
    (:mod:`sdplite.dra`): they are published in the node's ResourceSlice, where
    claims select devices by them. Attribute values are ``int``, ``bool``,
    ``str`` or :class:`sdplite.dra.Version`; capacities are quantity strings
    such as ``"80Gi"``. Device plugins ignore both.
    """

    id: str
    healthy: bool = True
    numa_nodes: Sequence[int] = ()
    nodes: Sequence[DeviceNode] = ()
    mounts: Sequence[Mount] = ()
    envs: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: Sequence[str] = ()
    reason: Optional[str] = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)

    _FIELDS = (
        "id",
        "healthy",
        "numa_nodes",
        "nodes",
        "mounts",
        "envs",
        "annotations",
        "cdi_devices",
        "reason",
        "attributes",
        "capacity",
    )
    __eq__ = _eq
    __repr__ = _repr

    def __init__(
        self,
        id: str,
        healthy: bool = True,
        numa_nodes: Sequence[int] = (),
        nodes: Sequence[DeviceNode] = (),
        mounts: Sequence[Mount] = (),
        envs: Mapping[str, str] = _NEW_DICT,
        annotations: Mapping[str, str] = _NEW_DICT,
        cdi_devices: Sequence[str] = (),
        reason: Optional[str] = None,
        attributes: Mapping[str, Any] = _NEW_DICT,
        capacity: Mapping[str, str] = _NEW_DICT,
    ) -> None:
        # Frozen and hashable: sequences become tuples, mappings sorted tuples.
        set_ = object.__setattr__
        set_(self, "id", id)
        set_(self, "healthy", healthy)
        set_(self, "numa_nodes", tuple(numa_nodes))
        set_(self, "nodes", tuple(nodes))
        set_(self, "mounts", tuple(mounts))
        set_(self, "envs", dict(_freeze(envs)) if envs else {})
        set_(self, "annotations", dict(_freeze(annotations)) if annotations else {})
        set_(self, "cdi_devices", tuple(cdi_devices))
        set_(self, "reason", reason)
        set_(self, "attributes", dict(_freeze(attributes)) if attributes else {})
        set_(self, "capacity", dict(_freeze(capacity)) if capacity else {})

    def __hash__(self) -> int:
        return hash(
            (
                self.id,
                self.healthy,
                self.numa_nodes,
                self.nodes,
                self.mounts,
                _freeze(self.envs),
                _freeze(self.annotations),
                self.cdi_devices,
                self.reason,
                _freeze(self.attributes),
                _freeze(self.capacity),
            )
        )

    @property
    def health(self) -> str:
        """The kubelet's spelling: "Healthy" or "Unhealthy"."""
        return HEALTHY if self.healthy else UNHEALTHY

    def with_health(self, healthy: bool, reason: Optional[str] = None) -> Device:
        """A copy with another health, and why (``reason``, kept on our side only)."""
        return self.with_id(self.id, healthy, reason)

    def with_id(self, device_id: str, healthy: bool, reason: Optional[str]) -> Device:
        """A copy with another ID, health and reason: the rest of the data is shared."""
        device = Device.__new__(Device)
        set_ = object.__setattr__
        set_(device, "id", device_id)
        set_(device, "healthy", healthy)
        set_(device, "numa_nodes", self.numa_nodes)
        set_(device, "nodes", self.nodes)
        set_(device, "mounts", self.mounts)
        set_(device, "envs", self.envs)
        set_(device, "annotations", self.annotations)
        set_(device, "cdi_devices", self.cdi_devices)
        set_(device, "reason", reason)
        set_(device, "attributes", self.attributes)
        set_(device, "capacity", self.capacity)
        return device

    def to_proto(self) -> pb.Device:
        """The v1beta1 Device message (ID, health, topology)."""
        message = pb.Device()
        _write_device(message, self)
        return message

    @classmethod
    def from_proto(cls, device: pb.Device) -> Device:
        """A Device from a v1beta1 Device message (no container data: the message has none)."""
        return cls(
            id=device.ID,
            healthy=device.health == HEALTHY,
            numa_nodes=[n.ID for n in device.topology.nodes],
        )


@dataclass(init=False, repr=False, eq=False, frozen=True)
class Allocation:
    """What one container gets: the friendly form of ``ContainerAllocateResponse``."""

    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    nodes: Sequence[DeviceNode] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: Sequence[str] = ()

    _FIELDS = ("envs", "mounts", "nodes", "annotations", "cdi_devices")
    __eq__ = _eq
    __hash__ = _hash
    __repr__ = _repr

    def __init__(
        self,
        envs: Mapping[str, str] = _NEW_DICT,
        mounts: Sequence[Mount] = (),
        nodes: Sequence[DeviceNode] = (),
        annotations: Mapping[str, str] = _NEW_DICT,
        cdi_devices: Sequence[str] = (),
    ) -> None:
        set_ = object.__setattr__
        set_(self, "envs", {} if envs is _NEW_DICT else envs)
        set_(self, "mounts", mounts)
        set_(self, "nodes", nodes)
        set_(self, "annotations", {} if annotations is _NEW_DICT else annotations)
        set_(self, "cdi_devices", cdi_devices)

    def to_proto(self) -> pb.ContainerAllocateResponse:
        response = pb.ContainerAllocateResponse()
        self.fill(response)
        return response

    def fill(self, response: pb.ContainerAllocateResponse) -> None:
        """Write this allocation into ``response``, in place.

        Allocate builds each container's answer inside the AllocateResponse
        this way: no standalone messages to build and then copy in.
        """
        if self.envs:
            response.envs.update(self.envs)
        if self.annotations:
            response.annotations.update(self.annotations)
        if self.mounts:
            add_mount = response.mounts.add
            for m in self.mounts:
                path = m.host_path
                add_mount(host_path=path, container_path=m.container_path or path, read_only=m.read_only)
        if self.nodes:
            add_node = response.devices.add
            for n in self.nodes:
                path = n.host_path
                add_node(host_path=path, container_path=n.container_path or path, permissions=n.permissions)
        if self.cdi_devices:
            add_cdi = response.cdi_devices.add
            for name in self.cdi_devices:
                add_cdi(name=name)


DeviceLike = Union[Device, "pb.Device", str]


def _to_device(item: Any, index: int) -> Device:
    if isinstance(item, Device):
        return item
    if isinstance(item, pb.Device):
        return Device.from_proto(item)
    if isinstance(item, str):
        return Device(item)
    raise DeviceListError(
        f"device #{index} is a {type(item).__name__}; give sdplite.Device objects, "
        f"v1beta1 Device messages or plain ID strings"
    )


def normalize_devices(devices: Any) -> tuple[Device, ...]:
    """Check a device list and return it as :class:`Device` objects.

    Refuses anything but a list or other sequence (a dict, set, generator or
    string: their order or meaning is not a device list's), items of the
    wrong type, empty or duplicate IDs, NUMA node numbers that are not non-negative ints, and a list too large
    for one ListAndWatch message.
    """
    if not isinstance(devices, (list, tuple)) and (
        isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence)
    ):
        kind = type(devices).__name__
        iterable = isinstance(devices, Iterable) and not isinstance(devices, (str, bytes))
        hint = ": pass list(...) of it, in the order you want" if iterable else ""
        raise DeviceListError(f"the device list must be a list of devices, not a {kind}{hint}")
    result = tuple(_to_device(item, i) for i, item in enumerate(devices))
    seen: set[str] = set()
    for i, device in enumerate(result):
        if not isinstance(device.id, str) or not device.id:
            raise DeviceListError(f"device #{i} has an empty ID: every device needs a unique ID")
        if device.id in seen:
            raise DeviceListError(f"device ID {device.id!r} appears twice: IDs must be unique")
        seen.add(device.id)
        for node in device.numa_nodes:
            if not isinstance(node, int) or isinstance(node, bool) or node < 0:
                raise DeviceListError(
                    f"device {device.id!r} has NUMA node {node!r}: NUMA nodes are ints >= 0"
                )
    return result


# -- the device list on the wire ----------------------------------------------------
#
# One place knows how a device list becomes bytes. A ListAndWatchResponse has
# one field, ``repeated Device devices = 1``; protobuf writes a repeated message
# field as one entry per element, each entry the tag byte 0x0a, the element's
# length as a varint and the element's bytes, and a message is the plain
# concatenation of its fields' entries (protobuf encoding guide, "Length-delimited
# records" and "Repeated elements": https://protobuf.dev/programming-guides/encoding/).
# So the list's bytes are its devices' entries joined, and one device's entry is
# what encoding a one-device list gives: a health change re-encodes one device.


def _write_device(message: pb.Device, device: Device) -> None:
    """Fill a v1beta1 Device message: the only place a Device becomes wire fields."""
    message.ID = device.id
    message.health = HEALTHY if device.healthy else UNHEALTHY
    if device.numa_nodes:
        add_node = message.topology.nodes.add
        for node in device.numa_nodes:
            add_node(ID=node)


def encode_device_list(devices: Sequence[Device]) -> bytes:
    """Serialise a ListAndWatchResponse once, for every watcher; refuse one over 4 MiB."""
    # Built in place (devices.add), not as standalone messages copied in:
    # for 70,000 devices that halves the time and the peak memory.
    message = pb.ListAndWatchResponse()
    add = message.devices.add
    for device in devices:
        _write_device(add(), device)
    data = message.SerializeToString()
    check_list_size(len(devices), len(data))
    return data


def encode_device_entry(device: Device) -> bytes:
    """One device's entry in an encoded list (see :func:`split_device_list`)."""
    return encode_device_list((device,))


def split_device_list(encoded: bytes) -> list[bytes]:
    """Cut :func:`encode_device_list`'s bytes into one entry per device, in order.

    ``b"".join`` of the result gives ``encoded`` back, and replacing one entry
    with :func:`encode_device_entry` of a changed device gives the bytes the
    whole changed list would encode to.
    """
    entries: list[bytes] = []
    view = memoryview(encoded)
    pos = 0
    end = len(encoded)
    while pos < end:
        start = pos
        if encoded[pos] != 0x0A:
            raise ValueError(f"byte {pos}: not a ListAndWatchResponse.devices entry (tag {encoded[pos]:#x})")
        pos += 1
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
    return entries


def join_device_list(entries: Sequence[bytes]) -> bytes:
    """The encoded list made of these entries; refuse one over 4 MiB like :func:`encode_device_list`."""
    encoded = b"".join(entries)
    check_list_size(len(entries), len(encoded))
    return encoded


def check_list_size(count: int, size: int) -> None:
    """Refuse a ListAndWatch message of ``size`` bytes that the kubelet would not take."""
    if size > MAX_LIST_BYTES:
        raise DeviceListError(
            f"{count} devices make a {size}-byte ListAndWatch message, over the "
            f"kubelet's 4 MiB limit ({MAX_LIST_BYTES} bytes): use shorter IDs or fewer devices "
            f"per resource (split them across several resources)"
        )


def default_allocation(devices: Mapping[str, Device], device_ids: Sequence[str]) -> Allocation:
    """What a container gets for ``device_ids``, from the devices' own data.

    Unknown or unhealthy IDs are refused with :class:`LookupError`, which the
    plugin turns into INVALID_ARGUMENT. Env vars set by several devices to
    different values are joined with commas, in request order.
    """
    if not device_ids:
        raise LookupError("the request names no devices")
    unknown = [i for i in device_ids if i not in devices]
    if unknown:
        raise LookupError(f"unknown device IDs {cut(repr(unknown))}")
    unhealthy = [i for i in device_ids if not devices[i].healthy]
    if unhealthy:
        raise LookupError(f"cannot allocate unhealthy devices {cut(repr(unhealthy))}")
    envs: dict[str, str] = {}
    annotations: dict[str, str] = {}
    nodes: list[DeviceNode] = []
    mounts: list[Mount] = []
    cdi: list[str] = []
    for device_id in device_ids:
        device = devices[device_id]
        for key, value in device.envs.items():
            if key in envs and value not in envs[key].split(","):
                envs[key] = f"{envs[key]},{value}"
            else:
                envs.setdefault(key, value)
        annotations.update(device.annotations)
        nodes += [n for n in device.nodes if n not in nodes]
        mounts += [m for m in device.mounts if m not in mounts]
        cdi += [c for c in device.cdi_devices if c not in cdi]
    return Allocation(envs=envs, mounts=mounts, nodes=nodes, annotations=annotations, cdi_devices=cdi)
