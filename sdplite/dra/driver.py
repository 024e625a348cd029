"""Preparing and unpreparing claims: the driver's logic, with no socket and no wire format.

:class:`Driver` answers the kubelet's two questions for a list of claims and
returns one outcome per claim (a list of prepared devices, or an error text),
never failing the whole call. The rules (docs/design.md, "Dynamic Resource
Allocation"):

- Claims of one call are handled one after another, under one lock shared by
  prepare and unprepare (what the Go helper does by default), which is also an
  flock shared with a second instance during a rolling update; the
  ResourceClaims are read from the API server before taking the lock.
- The user's ``prepare`` hook runs once per claim UID. A repeated Prepare
  (the kubelet repeats them after its restarts, and for every claim of a pod
  whose other claims failed) is answered from the checkpoint, and a lost CDI
  spec (``/var/run/cdi`` is a tmpfs) is written again.
- Unprepare of a claim never prepared, or already unprepared, succeeds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Protocol

from ..devices import Allocation, Device
from ..logtext import cut
from .claims import (
    AllocatedDevice,
    Checkpoint,
    Claim,
    ClaimError,
    Prepared,
    PreparedDevice,
    claim_from_object,
)
from .devices import DeviceTable

__all__ = ["Driver", "ClaimRef", "CdiWriter", "PrepareHook", "UnprepareHook", "default_allocation"]

log = logging.getLogger("sdplite.dra")

#: (namespace, uid, name), as the kubelet names a claim.
ClaimRef = tuple[str, str, str]
PrepareHook = Callable[[Claim], Any]
UnprepareHook = Callable[[Claim], None]
ClaimReader = Callable[[str, str], Mapping[str, Any]]


class CdiWriter(Protocol):
    """Where prepared devices' container edits become CDI specs (see :mod:`sdplite.dra.cdi`)."""

    def write(
        self, claim_uid: str, edits: Sequence[tuple[str, Allocation]]
    ) -> tuple[Optional[dict[str, Any]], dict[str, list[str]]]:
        """Write a spec for one claim; return it and the CDI IDs per device name."""

    def rewrite(self, claim_uid: str, spec: dict[str, Any]) -> None:
        """Write a spec returned by an earlier :meth:`write` again, if its file is gone."""

    def remove(self, claim_uid: str) -> None:
        """Remove the claim's spec file, if any."""


def default_allocation(device: Device) -> Allocation:
    """What a container gets for a device when the prepare hook says nothing: the device's own data."""
    return Allocation(
        envs=device.envs, mounts=device.mounts, nodes=device.nodes, cdi_devices=device.cdi_devices
    )


class Driver:
    """Prepare/unprepare for one DRA driver; thread-safe."""

    def __init__(
        self,
        name: str,
        table: DeviceTable,
        checkpoint: Checkpoint,
        prepare: Optional[PrepareHook] = None,
        unprepare: Optional[UnprepareHook] = None,
        read_claim: Optional[ClaimReader] = None,
        cdi: Optional[CdiWriter] = None,
    ) -> None:
        self.name = name
        self.table = table
        self.checkpoint = checkpoint
        self.prepare_hook = prepare
        self.unprepare_hook = unprepare
        self.read_claim = read_claim
        self.cdi = cdi
        self._lock = threading.Lock()

    # -- prepare -------------------------------------------------------------------

    def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, Any]:
        """{claim UID: [PreparedDevice] or an error text}, one entry per claim."""
        fetched: dict[str, Any] = {}
        for namespace, uid, name in claims:
            if self.checkpoint.get(uid) is None:
                fetched[uid] = self._fetch(namespace, uid, name)
        results: dict[str, Any] = {}
        with self._lock, self.checkpoint.locked():
            for namespace, uid, name in claims:
                results[uid] = self._prepare_one(namespace, uid, name, fetched.get(uid))
        return results

    def _fetch(self, namespace: str, uid: str, name: str) -> Any:
        """The claim with this driver's devices, or a ClaimError."""
        if self.read_claim is None:
            return ClaimError(
                "this driver has no Kubernetes API access to read ResourceClaims: run it in a pod with a "
                "service account, or give dra.build(..., kube=KubeClient(url, token=...))"
            )
        try:
            obj = self.read_claim(namespace, name)
            return claim_from_object(obj, uid, self.name, self.table.snapshot())
        except ClaimError as exc:
            return exc
        except Exception as exc:  # the API server's or the network's
            return ClaimError(f"reading ResourceClaim {namespace}/{name}: {exc}")

    def _prepare_one(self, namespace: str, uid: str, name: str, fetched: Any) -> Any:
        where = f"{cut(namespace)}/{cut(name)} ({cut(uid)})"
        done = self.checkpoint.get(uid)
        if done is not None:
            if done.cdi_spec is not None and self.cdi is not None:
                try:
                    self.cdi.rewrite(uid, done.cdi_spec)
                except OSError as exc:
                    return self._failed(where, f"re-creating its CDI spec: {exc}")
            log.info("%s: claim %s was already prepared: same answer", self.name, where)
            return done.devices
        if fetched is None:
            # It was prepared when the call began, then unprepared (say by the other
            # instance of a rolling update) before we held the lock: read it now.
            fetched = self._fetch(namespace, uid, name)
        if isinstance(fetched, ClaimError):
            return self._failed(where, str(fetched))
        claim: Claim = fetched
        try:
            answer = self.prepare_hook(claim) if self.prepare_hook is not None else None
            edits = _edits(claim.devices, answer)
            spec, ids = self.cdi.write(uid, edits) if self.cdi is not None else (None, {})
        except Exception as exc:
            return self._failed(
                where, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ClaimError) else str(exc)
            )
        devices = []
        for allocated, (_, allocation) in zip(claim.devices, edits):
            cdi_ids = list(allocation.cdi_devices) + ids.get(allocated.name, [])
            devices.append(
                PreparedDevice(
                    [allocated.request], allocated.pool, allocated.name, cdi_ids, allocated.share_id
                )
            )
        devices = _merge_requests(devices)
        self.checkpoint.add(Prepared(uid, claim.namespace, claim.name, devices, spec))
        log.info(
            "%s: prepared claim %s: devices %s, CDI %s",
            self.name,
            where,
            cut([d.name for d in devices]),
            cut([i for d in devices for i in d.cdi_ids]),
        )
        return devices

    def _failed(self, where: str, why: str) -> str:
        log.warning("%s: cannot prepare claim %s: %s", self.name, where, cut(why))
        return why

    # -- unprepare -----------------------------------------------------------------

    def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        """{claim UID: "" or an error text}; unknown claims succeed."""
        with self._lock, self.checkpoint.locked():
            return {uid: self._unprepare_one(namespace, uid, name) for namespace, uid, name in claims}

    def _unprepare_one(self, namespace: str, uid: str, name: str) -> str:
        where = f"{cut(namespace)}/{cut(name)} ({cut(uid)})"
        done = self.checkpoint.get(uid)
        if done is None:
            log.info("%s: claim %s is not prepared here: nothing to undo", self.name, where)
            return ""
        if self.unprepare_hook is not None:
            table = self.table.snapshot()
            devices = [
                AllocatedDevice(
                    d.requests[0] if d.requests else "",
                    d.pool,
                    d.name,
                    table.get(d.name),
                    (),
                    False,
                    d.share_id,
                )
                for d in done.devices
            ]
            try:
                self.unprepare_hook(Claim(uid, done.namespace, done.name, devices))
            except Exception as exc:
                return self._unprepare_failed(where, f"{type(exc).__name__}: {exc}")
        if self.cdi is not None:
            try:
                self.cdi.remove(uid)
            except OSError as exc:
                return self._unprepare_failed(where, f"removing its CDI spec: {exc}")
        self.checkpoint.remove(uid)
        log.info("%s: unprepared claim %s", self.name, where)
        return ""

    def _unprepare_failed(self, where: str, why: str) -> str:
        log.warning("%s: cannot unprepare claim %s: %s", self.name, where, cut(why))
        return why


def _edits(devices: Sequence[AllocatedDevice], answer: Any) -> list[tuple[str, Allocation]]:
    """What each device's containers get: the hook's answer, else the device's own data."""
    if answer is None:
        return [(d.name, default_allocation(d.device) if d.device else Allocation()) for d in devices]
    if isinstance(answer, Allocation):
        # One answer for the whole claim: it goes with the first device, once.
        return [(d.name, answer if i == 0 else Allocation()) for i, d in enumerate(devices)]
    if isinstance(answer, Mapping):
        unknown = set(answer) - {d.name for d in devices}
        if unknown:
            raise ClaimError(f"prepare returned edits for devices not in the claim: {sorted(unknown)}")
        edits = []
        for d in devices:
            value = answer.get(d.name)
            if value is not None and not isinstance(value, Allocation):
                raise ClaimError(
                    f"prepare returned a {type(value).__name__} for {d.name!r}; give sdplite.Allocation"
                )
            edits.append((d.name, value if value is not None else Allocation()))
        return edits
    raise ClaimError(
        f"prepare returned a {type(answer).__name__}; return None, an sdplite.Allocation, "
        f"or a dict of device name -> Allocation"
    )


def _merge_requests(devices: list[PreparedDevice]) -> list[PreparedDevice]:
    """One entry per (pool, device): a device serving two requests lists both."""
    merged: dict[tuple[str, str, Optional[str]], PreparedDevice] = {}
    for device in devices:
        key = (device.pool, device.name, device.share_id)
        if key in merged:
            seen = merged[key]
            seen.requests += [r for r in device.requests if r not in seen.requests]
            seen.cdi_ids += [i for i in device.cdi_ids if i not in seen.cdi_ids]
        else:
            merged[key] = device
    return list(merged.values())
