"""CDI spec files: the device setup a container runtime reads for each CDI name.

With the Container Device Interface, Allocate answers with fully qualified
device names (``vendor.com/class=name``) and the runtime (containerd, CRI-O)
looks each name up in the spec files of ``/var/run/cdi`` (and ``/etc/cdi``)
to learn the device nodes, mounts and env vars to add. This module turns
:class:`~sdplite.devices.Device` data into such a spec, writes it so that a
runtime never reads half a file (temp file + rename), and removes it.

It knows nothing of plugins: a device plugin (``build(..., cdi=True)``) and a
DRA driver use it alike. What a spec may contain and which ``cdiVersion`` a
feature needs is summarised in docs/design.md ("CDI spec files"), from the
CDI specification (cncf-tags/container-device-interface, SPEC.md and
specs-go/version.go).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from .devices import Device, DeviceListError, DeviceNode, Mount
from .files import write_atomic

__all__ = [
    "DEFAULT_CDI_DIR",
    "CdiError",
    "SpecFile",
    "kind_for",
    "qualified_name",
    "check_device_name",
    "container_edits",
    "has_entry",
    "build_spec",
    "required_version",
    "spec_file_name",
    "write_spec",
    "remove_spec",
]

#: Where runtimes look for transient (generated) specs; ``/etc/cdi`` is for static ones.
DEFAULT_CDI_DIR = "/var/run/cdi"

# Name rules of the CDI specification ("Kind" and "Device name"): vendor like a
# DNS name; class letters, digits, '_' and '-' ('.' from cdiVersion 0.6.0 on);
# device names also '.' and ':'. All start and end with a letter or digit.
_VENDOR = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?$")

#: The versions this module writes, oldest first: each later one only adds features.
_EARLIEST = "0.3.0"


class CdiError(DeviceListError):
    """Device data that cannot become a CDI spec; the message says what to change.

    A :class:`~sdplite.devices.DeviceListError` (so a ``ValueError``): a plugin
    with CDI on refuses such a list and keeps the last good one."""


def kind_for(resource_name: str) -> str:
    """The CDI kind (``vendor/class``) for a resource name: the name itself.

    ``example.com/gpu`` gives kind ``example.com/gpu`` and names such as
    ``example.com/gpu=gpu-0``. A resource name that CDI cannot take as a kind
    raises :class:`CdiError`.
    """
    vendor, slash, class_ = resource_name.partition("/")
    if not slash or not _VENDOR.match(vendor) or not _CLASS.match(class_):
        raise CdiError(
            f"resource name {resource_name!r} cannot be a CDI kind: CDI wants vendor/class, the vendor "
            f"a domain starting with a letter, the class letters, digits, '_', '-' or '.', both ending "
            f"with a letter or digit"
        )
    return resource_name


def check_device_name(device_id: str) -> str:
    """``device_id`` if CDI accepts it as a device name, else :class:`CdiError`."""
    if not _NAME.match(device_id):
        raise CdiError(
            f"device ID {device_id!r} cannot be a CDI device name: use letters, digits, '_', '-', "
            f"'.' or ':', starting and ending with a letter or digit"
        )
    return device_id


def qualified_name(kind: str, device_id: str) -> str:
    """The fully qualified CDI name of one device: ``vendor/class=name``."""
    return f"{kind}={device_id}"


def _node_edit(node: DeviceNode) -> dict[str, Any]:
    container_path = node.container_path or node.host_path
    edit: dict[str, Any] = {"path": container_path}
    if container_path != node.host_path:
        edit["hostPath"] = node.host_path  # cdiVersion 0.5.0
    if node.permissions:
        edit["permissions"] = node.permissions
    return edit


def _mount_edit(mount: Mount) -> dict[str, Any]:
    # No "type" (it would need cdiVersion 0.4.0): the "rbind" option makes it a
    # bind mount, as the kubelet's own device-plugin mounts are.
    return {
        "hostPath": mount.host_path,
        "containerPath": mount.container_path or mount.host_path,
        "options": ["rbind", "ro" if mount.read_only else "rw"],
    }


def container_edits(device: Device) -> dict[str, Any]:
    """One device's ``containerEdits``: its env vars, device nodes and mounts."""
    edits: dict[str, Any] = {}
    if device.envs:
        edits["env"] = [f"{key}={value}" for key, value in device.envs.items()]
    if device.nodes:
        edits["deviceNodes"] = [_node_edit(n) for n in device.nodes]
    if device.mounts:
        edits["mounts"] = [_mount_edit(m) for m in device.mounts]
    return edits


def build_spec(kind: str, devices: Iterable[Device]) -> dict[str, Any]:
    """The CDI spec for ``devices``: one entry per device, named by its ID.

    A device with no device nodes, mounts or env vars gets no entry: CDI
    refuses an entry with nothing to do (see :func:`has_entry`).
    ``cdiVersion`` is the lowest version the content needs, so that older
    runtimes load it too. Raises :class:`CdiError` for a name CDI refuses.
    """
    kind_for(kind)
    entries = []
    for device in devices:
        if has_entry(device):
            edits = container_edits(device)
            entries.append({"name": check_device_name(device.id), "containerEdits": edits})
    spec: dict[str, Any] = {"cdiVersion": _EARLIEST, "kind": kind, "devices": entries}
    spec["cdiVersion"] = required_version(spec)
    return spec


def has_entry(device: Device) -> bool:
    """Whether ``device`` gets an entry in the spec (it has something for the runtime to do)."""
    return bool(device.nodes or device.mounts or device.envs)


def required_version(spec: Mapping[str, Any]) -> str:
    """The lowest ``cdiVersion`` that allows everything ``spec`` uses.

    0.3.0 is the earliest that current runtimes load; 0.4.0 added a mount's
    ``type``; 0.5.0 device names starting with a digit and a device node's
    ``hostPath``; 0.6.0 annotations and dots in the class.
    """
    devices = spec.get("devices") or []
    every_edits = [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in devices]
    class_ = str(spec.get("kind", "")).partition("/")[2]
    if "." in class_ or spec.get("annotations") or any(d.get("annotations") for d in devices):
        return "0.6.0"
    if any(str(d.get("name", "a"))[:1].isdigit() for d in devices) or any(
        n.get("hostPath") for e in every_edits for n in e.get("deviceNodes") or ()
    ):
        return "0.5.0"
    if any(m.get("type") for e in every_edits for m in e.get("mounts") or ()):
        return "0.4.0"
    return _EARLIEST


def spec_file_name(kind: str) -> str:
    """The file name for ``kind``'s spec: ``vendor-class.json``, as CDI's tools name them."""
    return kind.replace("/", "-") + ".json"


def _encode(spec: Mapping[str, Any]) -> bytes:
    import json  # here, not at the top: only a plugin that writes CDI specs needs it

    return (json.dumps(spec, indent=2) + "\n").encode()


def write_spec(spec: Mapping[str, Any], directory: str = DEFAULT_CDI_DIR, name: Optional[str] = None) -> str:
    """Write ``spec`` into ``directory`` atomically; return the file's path.

    The directory is created if missing. ``name`` defaults to
    :func:`spec_file_name` of the spec's kind; it must end in ``.json``.
    """
    name = name or spec_file_name(str(spec["kind"]))
    if os.sep in name or not name.endswith(".json"):
        raise CdiError(f"CDI spec file name {name!r} must be a plain file name ending in .json")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    write_atomic(path, _encode(spec), mode=0o644, sync=True)
    return path


def remove_spec(path: str) -> bool:
    """Remove a spec file; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class SpecFile:
    """One kind's spec file, rewritten only when its content changes.

    ``SpecFile("example.com/gpu").update(devices)`` writes
    ``/var/run/cdi/example.com-gpu.json`` (the directory comes from
    ``directory``, else ``$SDPLITE_CDI_DIR``, else ``/var/run/cdi``);
    :meth:`names` gives the CDI names of the devices in it; :meth:`remove`
    deletes it. Not thread-safe: one writer at a time.
    """

    def __init__(self, kind: str, directory: Optional[str] = None, name: Optional[str] = None) -> None:
        self.kind = kind_for(kind)
        self.directory = directory or os.environ.get("SDPLITE_CDI_DIR") or DEFAULT_CDI_DIR
        self.path = os.path.join(self.directory, name or spec_file_name(kind))
        self._written: Optional[bytes] = None
        self._ids: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"SpecFile({self.kind!r}, path={self.path!r})"

    def update(self, devices: Iterable[Device]) -> bool:
        """Write the spec for ``devices`` if it differs from the last one written.

        Raises :class:`CdiError` (nothing written) for a device ID CDI refuses,
        and OSError if the directory cannot be written.
        """
        spec = build_spec(self.kind, devices)
        data = _encode(spec)
        if data == self._written and os.path.exists(self.path):
            return False
        os.makedirs(self.directory, exist_ok=True)
        write_atomic(self.path, data, mode=0o644, sync=True)
        self._written = data
        self._ids = frozenset(entry["name"] for entry in spec["devices"])
        return True

    def names(self, device_ids: Iterable[str]) -> list[str]:
        """The qualified CDI names of those of these devices that the spec has, in order."""
        ids = self._ids
        return [qualified_name(self.kind, i) for i in device_ids if i in ids]

    def remove(self) -> bool:
        """Delete the spec file (on a clean stop); False if it was not there.

        A file that no longer holds what we wrote is left alone: another
        process (say, the next version of this plugin during a rolling
        update) has written it since.
        """
        written, self._written = self._written, None
        self._ids = frozenset()
        if written is not None:
            try:
                with open(self.path, "rb") as handle:
                    if handle.read() != written:
                        return False
            except FileNotFoundError:
                return False
        return remove_spec(self.path)
