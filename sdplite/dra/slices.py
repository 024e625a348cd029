"""The node's devices as ResourceSlices in the API server, kept in step with the device list.

:func:`device_entry` turns an :class:`sdplite.Device` into a ResourceSlice
device (name, attributes, capacity) and refuses what the API server would
refuse. :class:`SlicePublisher` reconciles the slices of one pool (the node)
on its own thread: on every device change and every ``RESYNC`` seconds it
lists the node's slices for this driver, and if they differ from the wanted
ones it bumps the pool generation, deletes the extra slices, updates the
others in place and creates the missing ones. Any error (409 Conflict
included) is retried with backoff after a fresh list. The pool rules and
limits are in docs/design.md, "Dynamic Resource Allocation".
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional
from urllib.parse import quote

from ..devices import Device, DeviceListError
from ..logtext import cut
from ..wire.shutdown import Shutdown
from .kube import KubeClient, KubeError

__all__ = [
    "Version",
    "SlicePublisher",
    "device_entry",
    "device_entries",
    "validate_driver_name",
    "RESOURCE_API",
    "SLICES_PATH",
    "MAX_DEVICES_PER_SLICE",
]

log = logging.getLogger("sdplite.dra")

RESOURCE_API = "/apis/resource.k8s.io/v1"
SLICES_PATH = RESOURCE_API + "/resourceslices"
#: The API server's limits (kubernetes/api resource/v1/types.go).
MAX_DEVICES_PER_SLICE = 128
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_VALUE_LENGTH = 64
#: Re-list this often, to bring back slices the kubelet wiped at its restart.
RESYNC = 30.0
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL = re.compile(rf"^{_DNS_LABEL}$")
_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


class Version(str):
    """An attribute value published as a semantic version (``{"version": "1.2.3"}``), not a string."""

    __slots__ = ()


def validate_driver_name(name: str) -> str:
    """Return ``name`` if it is a valid DRA driver name: a lower-case DNS subdomain, <= 63 characters."""
    if not isinstance(name, str) or not name or len(name) > 63 or not _SUBDOMAIN.match(name):
        raise ValueError(
            f"DRA driver name {name!r} must be a lower-case DNS subdomain of at most 63 characters, "
            f"for example 'gpu.example.com'"
        )
    return name


def _check_qualified(kind: str, device: str, name: str) -> None:
    domain, _, short = name.rpartition("/")
    if domain and (len(domain) > 63 or not _SUBDOMAIN.match(domain)):
        raise DeviceListError(f"device {device!r}: {kind} {name!r} has a domain that is not a DNS subdomain")
    if len(short) > 32 or not _C_IDENTIFIER.match(short):
        raise DeviceListError(
            f"device {device!r}: {kind} name {name!r} must be a C identifier of at most 32 characters "
            f"(letters, digits, '_'), optionally prefixed by 'domain/'"
        )


def _attribute(device: str, name: str, value: Any) -> dict[str, Any]:
    _check_qualified("attribute", device, name)
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise DeviceListError(
                f"device {device!r}: attribute {name!r} is over {MAX_VALUE_LENGTH} characters"
            )
        if isinstance(value, Version):
            if not _SEMVER.match(value):
                raise DeviceListError(
                    f"device {device!r}: attribute {name!r} is not a semantic version: {value!r}"
                )
            return {"version": str(value)}
        return {"string": value}
    raise DeviceListError(
        f"device {device!r}: attribute {name!r} is a {type(value).__name__}; "
        f"use int, bool, str or dra.Version"
    )


def device_entry(device: Device) -> dict[str, Any]:
    """One device of a ResourceSlice, from an :class:`sdplite.Device`.

    Raises DeviceListError for what the API server would refuse.
    """
    name = device.id
    if len(name) > 63 or not _LABEL.match(name):
        raise DeviceListError(
            f"device ID {name!r} cannot be a DRA device name: use a DNS label "
            f"(lower-case letters, digits and '-', at most 63 characters), e.g. 'gpu-0'"
        )
    if len(device.attributes) + len(device.capacity) > MAX_ATTRIBUTES_AND_CAPACITIES:
        raise DeviceListError(
            f"device {name!r} has over {MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities together"
        )
    entry: dict[str, Any] = {"name": name}
    if device.attributes:
        entry["attributes"] = {k: _attribute(name, k, v) for k, v in device.attributes.items()}
    if device.capacity:
        for key, value in device.capacity.items():
            _check_qualified("capacity", name, key)
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise DeviceListError(f"device {name!r}: capacity {key!r} must be a quantity such as '80Gi'")
        entry["capacity"] = {k: {"value": str(v)} for k, v in device.capacity.items()}
    return entry


def device_entries(devices: Sequence[Device]) -> list[dict[str, Any]]:
    return [device_entry(d) for d in devices]


def _chunks(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Devices split into slices of at most 128; one empty slice when there are none."""
    if not entries:
        return [[]]
    return [entries[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(entries), MAX_DEVICES_PER_SLICE)]


def _comparable(devices: Any) -> list[tuple[str, str, str]]:
    """A slice's devices as we set them (the server may add defaults to other fields)."""
    import json

    return sorted(
        (
            d.get("name", ""),
            json.dumps(d.get("attributes", {}), sort_keys=True),
            json.dumps(d.get("capacity", {})),
        )
        for d in devices or ()
    )


class SlicePublisher:
    """Keeps the ResourceSlices of one node and driver equal to ``devices()``, on its own thread."""

    def __init__(
        self, kube: KubeClient, driver: str, node: str, devices: Callable[[], Sequence[Device]]
    ) -> None:
        self.kube = kube
        self.driver = driver
        self.node = node
        self._devices = devices
        self._node_uid: Optional[str] = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: Set after each sync that left the API server matching the devices.
        self.synced = threading.Event()
        #: Seconds between re-lists when nothing changed.
        self.resync = RESYNC
        self.generation = 0
        self.last_error: Optional[str] = None

    # -- the thread ------------------------------------------------------------------

    def start(self) -> None:
        # A fresh event per run: a thread of an earlier run that outlived its stop's
        # deadline (a request hanging) must not be woken into publishing beside this one.
        self._stop = stop = threading.Event()
        self._changed.set()  # publish at once
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name=f"sdplite-dra-slices-{self.driver}", daemon=True
        )
        self._thread.start()

    def changed(self) -> None:
        """The device list changed: publish soon."""
        self.synced.clear()
        self._changed.set()

    def stop(self, shutdown: Optional[Shutdown] = None) -> None:
        """Stop publishing (a request under way is abandoned at ``shutdown``'s deadline);
        the slices stay (the kubelet or the Node's deletion removes them)."""
        self._stop.set()
        self._changed.set()
        thread, self._thread = self._thread, None
        (shutdown or Shutdown(5.0)).join(thread, "publishing ResourceSlices")

    def _run(self, stop: threading.Event) -> None:
        backoff = BACKOFF_FIRST
        wait = 0.0
        while not stop.is_set():
            self._changed.wait(wait)
            self._changed.clear()
            if stop.is_set():
                return
            try:
                self.sync()
            except KubeError as exc:
                self.last_error = str(exc)
                log.warning(
                    "%s: publishing ResourceSlices failed, retrying in %.1fs: %s",
                    self.driver,
                    backoff,
                    cut(exc),
                )
                wait, backoff = backoff, min(backoff * 2, BACKOFF_CAP)
                continue
            except DeviceListError as exc:
                self.last_error = str(exc)
                log.error("%s: devices cannot be published as ResourceSlices: %s", self.driver, exc)
                wait = self.resync
                continue
            self.last_error = None
            backoff, wait = BACKOFF_FIRST, self.resync
            self.synced.set()

    # -- one reconcile -------------------------------------------------------------

    def sync(self) -> bool:
        """List, compare, write. True if something was written; KubeError on any failure."""
        entries = device_entries(self._devices())
        wanted = _chunks(entries)
        if self._node_uid is None:
            node = self.kube.get(f"/api/v1/nodes/{quote(self.node, safe='')}")
            self._node_uid = node["metadata"]["uid"]
        selector = f"spec.driver={self.driver},spec.nodeName={self.node}"
        existing = sorted(
            self.kube.get(SLICES_PATH, fieldSelector=selector).get("items") or [],
            key=lambda s: s["metadata"]["name"],
        )
        generation = max((s["spec"].get("pool", {}).get("generation", 0) for s in existing), default=0)
        if self._matches(existing, wanted, generation):
            self.generation = generation
            return False
        generation += 1
        for stale in existing[len(wanted) :]:
            self._delete(stale)
        for index, devices in enumerate(wanted):
            spec = self._spec(devices, generation, len(wanted))
            if index < len(existing):
                current = existing[index]
                current["spec"] = spec
                self.kube.put(f"{SLICES_PATH}/{current['metadata']['name']}", current)
            else:
                self.kube.post(SLICES_PATH, self._new_slice(index, spec))
        self.generation = generation
        log.info(
            "%s: published %d devices in %d ResourceSlice(s) for node %s (pool generation %d)",
            self.driver,
            len(entries),
            len(wanted),
            self.node,
            generation,
        )
        return True

    def _matches(
        self, existing: list[dict[str, Any]], wanted: list[list[dict[str, Any]]], generation: int
    ) -> bool:
        if len(existing) != len(wanted) or not existing:
            return False
        for current, devices in zip(existing, wanted):
            pool = current["spec"].get("pool", {})
            if (pool.get("generation"), pool.get("resourceSliceCount"), pool.get("name")) != (
                generation,
                len(wanted),
                self.node,
            ):
                return False
            if _comparable(current["spec"].get("devices")) != _comparable(devices):
                return False
        return True

    def _spec(self, devices: list[dict[str, Any]], generation: int, count: int) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "nodeName": self.node,
            "pool": {"name": self.node, "generation": generation, "resourceSliceCount": count},
            "devices": devices,
        }

    def _new_slice(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {
                "generateName": f"{index:05x}-{self.driver}-{self.node}-",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node,
                        "uid": self._node_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
        }

    def _delete(self, stale: dict[str, Any]) -> None:
        meta = stale["metadata"]
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        }
        try:
            self.kube.delete(f"{SLICES_PATH}/{meta['name']}", options)
        except KubeError as exc:
            if exc.status != 404:  # already gone: fine
                raise
