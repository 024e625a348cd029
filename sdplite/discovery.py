"""Devices from files on the node: path globs, groups of paths, USB devices.

The building blocks of ``sdplite serve``, for library users too: describe a
resource as :class:`Group` s of :class:`PathSpec` s (globs) or :class:`UsbSpec` s
(vendor/product/serial) and hand :class:`GroupDevices` to :func:`sdplite.build`
as its ``get_devices``::

    from sdplite import build
    from sdplite.discovery import Group, GroupDevices, PathSpec

    capture = GroupDevices([Group(paths=[PathSpec("/dev/snd/pcmC0D0c"), PathSpec("/dev/snd/controlC0")])])
    plugin = build("example.com/capture", "capture.sock", capture)

The semantics are those of squat/generic-device-plugin's ``groups``, so its
configurations give the same devices and the same device IDs (docs/serve.md
lists where we differ and why): a group is one device (a "meta-device") made
of one match of each of its paths, offered ``count`` times; its ID is the hex
SHA-1 of the share number followed by the host paths it holds.

Every file-system lookup goes through ``root`` (default ``/``): a plugin whose
container mounts the host's ``/`` at ``/host`` passes ``root="/host"``, and
tests point it at a fake tree of real files and symlinks. Paths handed to the
kubelet are always the host's (``root`` taken off).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from .devices import Device, DeviceNode, Mount
from .logtext import cut_list

__all__ = [
    "PathSpec",
    "UsbSpec",
    "Group",
    "UsbDevice",
    "GroupDevices",
    "glob_paths",
    "usb_devices",
    "discover",
    "check_pattern",
]

log = logging.getLogger("sdplite")

DEVICE = "Device"
MOUNT = "Mount"
USB_SYSFS = "sys/bus/usb/devices"
_MAGIC = frozenset("*?[\\")


@dataclass(frozen=True)
class PathSpec:
    """One path of a group: a glob, and how a match reaches the container.

    ``type`` is ``"Device"`` (a device node with ``permissions``) or
    ``"Mount"`` (a bind mount, ``read_only`` or not). ``mount_path`` is where
    the container sees it (default: the host path); ending in ``/`` it is a
    directory and the match keeps its file name inside it. ``limit``: how
    many devices of the group may share one match when another path of the
    group matches more files. ``optional``: a path that matches nothing is
    left out instead of leaving the group with no device at all.
    """

    path: str
    mount_path: str = ""
    type: str = DEVICE
    permissions: str = "mrw"
    read_only: bool = False
    limit: int = 1
    optional: bool = False

    def __post_init__(self) -> None:
        if self.type not in (DEVICE, MOUNT):
            raise ValueError(f'PathSpec.type must be "Device" or "Mount", not {self.type!r}')
        if not os.path.isabs(self.path):
            raise ValueError(f"PathSpec.path must be an absolute path or glob, not {self.path!r}")
        if self.limit < 1:
            raise ValueError(f"PathSpec.limit must be at least 1, not {self.limit!r}")
        check_pattern(self.path)

    def container_path(self, host_path: str) -> str:
        target = self.mount_path or host_path
        if target.endswith("/"):
            target += os.path.basename(host_path)
        return target


@dataclass(frozen=True)
class UsbSpec:
    """A USB device to look for: vendor and product IDs, and a serial number if given."""

    vendor: int
    product: int
    serial: str = ""

    def matches(self, device: UsbDevice) -> bool:
        return (
            device.vendor == self.vendor
            and device.product == self.product
            and (not self.serial or device.serial == self.serial)
        )


@dataclass(frozen=True)
class Group:
    """One kind of meta-device: several paths mounted together, or USB devices; offered ``count`` times."""

    paths: Sequence[PathSpec] = ()
    usb: Sequence[UsbSpec] = ()
    count: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "usb", tuple(self.usb))
        if bool(self.paths) == bool(self.usb):
            raise ValueError("a Group has either paths or usb specs (one of them, not both)")
        if self.count < 1:
            raise ValueError(f"Group.count must be at least 1, not {self.count!r}")


@dataclass(frozen=True)
class UsbDevice:
    """A USB device found in sysfs, and its node ``/dev/bus/usb/BBB/DDD``."""

    vendor: int
    product: int
    serial: str
    bus: int
    device: int

    @property
    def node(self) -> str:
        return f"/dev/bus/usb/{self.bus:03d}/{self.device:03d}"


def check_pattern(pattern: str) -> None:
    """Raise ValueError for a glob that Go's path.Match would refuse (an unclosed ``[``)."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f"glob {pattern!r} has a '[' without its closing ']'")
            i = end
        i += 1


def _translate(part: str) -> str:
    """Go's path.Match syntax (``[^a]``, ``\\*``) in fnmatch's (``[!a]``, ``[*]``)."""
    out = []
    i = 0
    while i < len(part):
        char = part[i]
        if char == "\\" and i + 1 < len(part):
            i += 1
            out.append(f"[{part[i]}]" if part[i] in "*?[" else part[i])
        elif char == "[" and part[i + 1 : i + 2] == "^":
            out.append("[!")
            i += 1
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _unescape(part: str) -> str:
    out, escaped = [], False
    for char in part:
        if char == "\\" and not escaped:
            escaped = True
            continue
        out.append(char)
        escaped = False
    return "".join(out)


def glob_paths(pattern: str, root: str = "/") -> list[str]:
    """Host paths matching ``pattern``, sorted; ``*`` matches dot-files too (as Go's fs.Glob)."""
    found = [""]
    for part in [p for p in pattern.split("/") if p]:
        if not _MAGIC.intersection(part):
            found = [f"{rel}/{part}" for rel in found]
            continue
        if not any(c in part for c in "*?["):  # escapes only: a plain name
            found = [f"{rel}/{_unescape(part)}" for rel in found]
            continue
        compiled, step = _translate(part), []
        for rel in found:
            try:
                names = os.listdir(os.path.join(root, rel.lstrip("/")))
            except OSError:
                continue
            step += [f"{rel}/{n}" for n in names if fnmatch.fnmatchcase(n, compiled)]
        found = step
    return sorted(p for p in found if p and os.path.exists(os.path.join(root, p.lstrip("/"))))


def _read(directory: str, name: str) -> Optional[str]:
    try:
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
            return handle.read().rstrip("\n")
    except OSError:
        return None


def _usb_device(directory: str) -> Optional[UsbDevice]:
    """A device directory has idVendor; interfaces and buses' glue entries do not."""
    if not os.path.isdir(directory):
        return None
    fields = [_read(directory, n) for n in ("idVendor", "idProduct", "busnum", "devnum")]
    try:
        vendor, product = int(fields[0] or "", 16), int(fields[1] or "", 16)
        bus, number = int(fields[2] or "", 10), int(fields[3] or "", 10)
    except ValueError:
        return None
    return UsbDevice(vendor, product, _read(directory, "serial") or "", bus, number)


def usb_devices(root: str = "/") -> list[UsbDevice]:
    """Every USB device in ``ROOT/sys/bus/usb/devices``, sorted by bus and number."""
    base = os.path.join(root, USB_SYSFS)
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = (_usb_device(os.path.join(base, name)) for name in names)
    return sorted((d for d in found if d is not None), key=lambda d: (d.bus, d.device))


def _device_id(share: int, host_paths: Iterable[str]) -> str:
    digest = hashlib.sha1(str(share).encode(), usedforsecurity=False)
    for path in host_paths:
        digest.update(path.encode())
    return digest.hexdigest()


def _path_group(group: Group, root: str) -> list[Device]:
    """One device per row: the i-th match of every path that matched (optional ones may not)."""
    columns: list[tuple[PathSpec, list[str]]] = []
    length, cap = 0, None
    for spec in group.paths:
        matches = glob_paths(spec.path, root)
        if not matches and spec.optional:
            continue
        reusable = matches * spec.limit
        columns.append((spec, reusable))
        length = max(length, len(matches))
        cap = len(reusable) if cap is None else min(cap, len(reusable))
    length = min(length, cap or 0)
    devices = []
    for row in range(length):
        nodes, mounts, hosts = [], [], []
        for spec, matches in columns:
            host = matches[row]
            hosts.append(host)
            if spec.type == DEVICE:
                nodes.append(DeviceNode(host, spec.container_path(host), spec.permissions))
            else:
                mounts.append(Mount(host, spec.container_path(host), spec.read_only))
        devices += [
            Device(_device_id(share, hosts), nodes=nodes, mounts=mounts) for share in range(group.count)
        ]
    return devices


def _usb_group(group: Group, present: Sequence[UsbDevice]) -> list[Device]:
    """All the matches of a group's USB specs make one device, offered ``count`` times."""
    hosts = [d.node for spec in group.usb for d in present if spec.matches(d)]
    if not hosts:
        return []
    nodes = [DeviceNode(h, h, "rw") for h in hosts]
    return [Device(_device_id(share, hosts), nodes=nodes) for share in range(group.count)]


def discover(groups: Sequence[Group], root: str = "/") -> list[Device]:
    """The devices these groups find now, all Healthy (a device that is gone is not listed)."""
    present = usb_devices(root) if any(g.usb for g in groups) else []
    devices: list[Device] = []
    for group in groups:
        devices += _usb_group(group, present) if group.usb else _path_group(group, root)
    return devices


class GroupDevices:
    """``get_devices`` for :func:`sdplite.build`: :func:`discover` on every scan.

    Assign :attr:`groups` to change what it looks for (``sdplite serve`` does
    on a config reload); the next scan uses the new groups. With ``name`` (the
    resource's), a scan that finds nothing logs one WARNING, until one finds
    something again.
    """

    def __init__(self, groups: Sequence[Group], root: str = "/", name: str = "") -> None:
        self.groups = tuple(groups)
        self.root = root
        self.name = name
        self._empty_warned = False

    def __repr__(self) -> str:
        return f"GroupDevices({list(self.groups)!r}, root={self.root!r})"

    def __call__(self) -> list[Device]:
        devices = discover(self.groups, self.root)
        if devices or not self.name:
            self._empty_warned = False
        elif not self._empty_warned:
            self._empty_warned = True
            wanted = [p.path for g in self.groups for p in g.paths]
            wanted += [f"USB {u.vendor:04x}:{u.product:04x}" for g in self.groups for u in g.usb]
            log.warning(
                "%s: nothing matches %s, so the resource has 0 devices: check the paths "
                "(and that the host's /dev is mounted into the container)",
                self.name,
                cut_list(wanted),
            )
        return devices
