"""Claims as a driver's hooks see them, read from a ResourceClaim; and the checkpoint of prepared ones.

The kubelet sends only a claim's namespace, name and UID. What was allocated
(which devices of this driver, for which requests, with which opaque config)
is in the ResourceClaim's ``status.allocation``: :func:`claim_from_object`
turns that JSON into a :class:`Claim`. :class:`Checkpoint` remembers which
claims this driver prepared, in a JSON file replaced atomically, so that a
restarted plugin answers the kubelet's repeated Prepare and Unprepare calls
correctly (docs/design.md, "Dynamic Resource Allocation").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

from ..devices import Device
from ..files import write_atomic

__all__ = [
    "AllocatedDevice",
    "Claim",
    "ClaimError",
    "PreparedDevice",
    "Prepared",
    "Checkpoint",
    "claim_from_object",
]

log = logging.getLogger("sdplite.dra")

CHECKPOINT_VERSION = 1


class ClaimError(Exception):
    """This claim cannot be prepared; the text goes back to the kubelet (and into a pod event)."""


class AllocatedDevice:
    """One device of this driver allocated to a claim.

    ``request`` is the base request name (``gpu``, not ``gpu/big``), ``config``
    the opaque parameters for it (class configs first, later entries win),
    ``device`` our :class:`sdplite.Device` of that name.
    """

    __slots__ = ("request", "pool", "name", "device", "config", "admin_access", "share_id")

    def __init__(
        self,
        request: str,
        pool: str,
        name: str,
        device: Optional[Device] = None,
        config: Sequence[Any] = (),
        admin_access: bool = False,
        share_id: Optional[str] = None,
    ) -> None:
        self.request = request
        self.pool = pool
        self.name = name
        self.device = device
        self.config = tuple(config)
        self.admin_access = admin_access
        self.share_id = share_id

    def __repr__(self) -> str:
        return f"AllocatedDevice(request={self.request!r}, pool={self.pool!r}, name={self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AllocatedDevice):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)


class Claim:
    """A ResourceClaim as a hook sees it: identity and this driver's allocated devices."""

    __slots__ = ("uid", "namespace", "name", "devices")

    def __init__(self, uid: str, namespace: str, name: str, devices: Sequence[AllocatedDevice] = ()) -> None:
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.devices = tuple(devices)

    def __repr__(self) -> str:
        return (
            f"Claim({self.namespace}/{self.name}, uid={self.uid!r}, devices={[d.name for d in self.devices]})"
        )


class PreparedDevice:
    """What the kubelet is told about one prepared device (and what the checkpoint keeps)."""

    __slots__ = ("requests", "pool", "name", "cdi_ids", "share_id")

    def __init__(
        self,
        requests: Sequence[str],
        pool: str,
        name: str,
        cdi_ids: Sequence[str] = (),
        share_id: Optional[str] = None,
    ) -> None:
        self.requests = list(requests)
        self.pool = pool
        self.name = name
        self.cdi_ids = list(cdi_ids)
        self.share_id = share_id

    def __repr__(self) -> str:
        return f"PreparedDevice({self.pool}/{self.name}, requests={self.requests}, cdi={self.cdi_ids})"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "pool": self.pool,
            "device": self.name,
            "cdi": self.cdi_ids,
        }
        if self.share_id is not None:
            data["shareID"] = self.share_id
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedDevice:
        return cls(data["requests"], data["pool"], data["device"], data.get("cdi", ()), data.get("shareID"))


class Prepared:
    """One prepared claim as the checkpoint keeps it: enough to answer a repeated
    Prepare, to re-create a lost CDI spec, and to unprepare after the claim is gone."""

    __slots__ = ("uid", "namespace", "name", "devices", "cdi_spec")

    def __init__(
        self,
        uid: str,
        namespace: str,
        name: str,
        devices: Sequence[PreparedDevice],
        cdi_spec: Optional[dict[str, Any]] = None,
    ) -> None:
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.devices = list(devices)
        self.cdi_spec = cdi_spec


def _base_request(name: str) -> str:
    """``gpu/big`` (a prioritized-list subrequest) is request ``gpu`` to the kubelet."""
    return name.split("/", 1)[0]


def claim_from_object(obj: Mapping[str, Any], uid: str, driver: str, devices: Mapping[str, Device]) -> Claim:
    """This driver's part of a ResourceClaim object (JSON); ClaimError if it cannot be prepared."""
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    if meta.get("uid") != uid:
        raise ClaimError(
            f"ResourceClaim {where} has UID {meta.get('uid')!r}, not {uid!r}: it was deleted and re-created"
        )
    allocation = (obj.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError(f"ResourceClaim {where} is not allocated (no status.allocation)")
    results = (allocation.get("devices") or {}).get("results") or []
    configs = (allocation.get("devices") or {}).get("config") or []
    allocated = []
    for result in results:
        if result.get("driver") != driver:
            continue
        request = result.get("request", "")
        name = result.get("device", "")
        device = devices.get(name)
        if device is None:
            raise ClaimError(
                f"ResourceClaim {where} was allocated device {name!r}, which this driver does not have"
            )
        allocated.append(
            AllocatedDevice(
                _base_request(request),
                result.get("pool", ""),
                name,
                device,
                _config_for(configs, request, driver),
                bool(result.get("adminAccess")),
                result.get("shareID"),
            )
        )
    return Claim(uid, meta.get("namespace", ""), meta.get("name", ""), allocated)


def _config_for(configs: Sequence[Mapping[str, Any]], request: str, driver: str) -> list[Any]:
    """Opaque parameters for this driver that apply to ``request`` (an empty ``requests`` means all)."""
    found = []
    for entry in configs:
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != driver:
            continue
        requests = entry.get("requests") or []
        if not requests or request in requests or _base_request(request) in requests:
            found.append(opaque.get("parameters"))
    return found


class Checkpoint:
    """Prepared claims (UID -> namespace, name, devices) in a JSON file, written atomically. Thread-safe.

    During a rolling update two pods of the driver share the file: :meth:`locked`
    takes an flock on ``serialize.lock`` beside it (as the Go helper does) and
    reads the file again, so each instance sees the other's changes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._claims: dict[str, dict[str, Any]] = {}
        self._load()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock and work on the file's current content."""
        import fcntl

        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, "serialize.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._claims = {}
                self._load()
            yield
        finally:
            os.close(fd)  # releases the flock

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {CHECKPOINT_VERSION}")
            self._claims = dict(data["claims"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path + ".corrupt"
            log.error("checkpoint %s is unreadable (%s): moved to %s, starting empty", self.path, exc, aside)
            try:
                os.replace(self.path, aside)
            except OSError:
                pass

    def get(self, uid: str) -> Optional[Prepared]:
        with self._lock:
            entry = self._claims.get(uid)
        if entry is None:
            return None
        devices = [PreparedDevice.from_json(d) for d in entry["devices"]]
        return Prepared(uid, entry["namespace"], entry["name"], devices, entry.get("cdiSpec"))

    def uids(self) -> list[str]:
        with self._lock:
            return list(self._claims)

    def add(self, prepared: Prepared) -> None:
        with self._lock:
            entry: dict[str, Any] = {
                "namespace": prepared.namespace,
                "name": prepared.name,
                "devices": [d.to_json() for d in prepared.devices],
            }
            if prepared.cdi_spec is not None:
                entry["cdiSpec"] = prepared.cdi_spec
            self._claims[prepared.uid] = entry
            self._write()

    def remove(self, uid: str) -> None:
        with self._lock:
            if self._claims.pop(uid, None) is not None:
                self._write()

    def _write(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        data = json.dumps({"version": CHECKPOINT_VERSION, "claims": self._claims}, sort_keys=True)
        write_atomic(self.path, data.encode(), sync=True)
