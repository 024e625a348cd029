"""Replicas: one physical device advertised as several schedulable IDs (time-slicing).

The kubelet counts and hands out IDs; it cannot know that ``gpu-0::0`` and
``gpu-0::1`` are the same GPU. :class:`Replicas` keeps that mapping on our
side: it expands the physical list into replica devices (``<id>::<n>``, n from
0, each carrying the physical device's health, topology and container data),
maps the IDs of an Allocate back to their physical devices, and suggests which
replicas a container should get (spread across physical devices, or packed
onto as few as possible).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable, Union

from .devices import Device, DeviceListError

__all__ = ["Replicas", "SEPARATOR", "replica_id", "POLICIES"]

#: Between the physical ID and the replica's number: ``gpu-0::2``.
SEPARATOR = "::"
#: The ways :meth:`Replicas.preferred` can choose.
POLICIES = ("spread", "pack")

Count = Union[int, Callable[[Device], int]]


def replica_id(device_id: str, index: int) -> str:
    """The ID of replica ``index`` (from 0) of physical device ``device_id``."""
    return f"{device_id}{SEPARATOR}{index}"


def _check_count(count: object, what: str) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DeviceListError(f"{what} must be an int >= 1, not {count!r}")
    return count


class Replicas:
    """How many IDs each physical device is advertised as, and the way back.

    ``count`` is an int for every device, or a function of the
    :class:`~sdplite.devices.Device` returning its count (e.g. by memory size).
    ``policy`` is ``"spread"`` (default: each replica from the physical device
    with the most free replicas, so containers share devices as little as
    possible) or ``"pack"`` (fill one physical device before the next).
    Thread-safe for readers: the maps are replaced in one assignment.
    """

    def __init__(self, count: Count, policy: str = "spread") -> None:
        if not callable(count):
            _check_count(count, "replicas")
        if policy not in POLICIES:
            raise ValueError(f"replica policy must be one of {POLICIES}, not {policy!r}")
        self.count = count
        self.policy = policy
        self._physical: dict[str, str] = {}  # replica ID -> physical ID
        self._replicas: dict[str, tuple[str, ...]] = {}  # physical ID -> replica IDs
        self._next: tuple[dict[str, str], dict[str, tuple[str, ...]]] = ({}, {})

    def __repr__(self) -> str:
        return f"Replicas({self.count!r}, policy={self.policy!r})"

    def count_for(self, device: Device) -> int:
        if callable(self.count):
            return _check_count(self.count(device), f"replicas({device.id!r})")
        return self.count

    def expand(self, devices: Sequence[Device], commit: bool = True) -> tuple[Device, ...]:
        """The replica devices for a physical list, and the mapping for it.

        The mapping takes effect now, or with ``commit=False`` at the next
        :meth:`commit` (once the list is installed: a refused list changes nothing).
        """
        expanded: list[Device] = []
        physical: dict[str, str] = {}
        replicas: dict[str, tuple[str, ...]] = {}
        for device in devices:
            ids = tuple(replica_id(device.id, i) for i in range(self.count_for(device)))
            replicas[device.id] = ids
            for rid in ids:
                physical[rid] = device.id
                expanded.append(device.with_id(rid, device.healthy, device.reason))
        self._next = (physical, replicas)
        if commit:
            self.commit()
        return tuple(expanded)

    def commit(self) -> None:
        """Make the mapping of the last :meth:`expand` current."""
        self._physical, self._replicas = self._next

    def ids_of(self, device_id: str) -> tuple[str, ...]:
        """The replica IDs of a physical device; KeyError (with a hint) otherwise."""
        ids = self._replicas.get(device_id)
        if ids is None:
            owner = self._physical.get(device_id)
            if owner is not None:
                raise KeyError(f"{device_id!r} is a replica of {owner!r}: give the physical device's ID")
            raise KeyError(f"no physical device {device_id!r}")
        return ids

    def physical_of(self, device_id: str) -> str:
        """The physical device of a replica ID (an unknown ID is returned as is)."""
        return self._physical.get(device_id, device_id)

    def physical_ids(self, device_ids: Iterable[str]) -> list[str]:
        """The physical devices behind these replica IDs, each once, in order."""
        physical = self._physical
        return list(dict.fromkeys(physical.get(i, i) for i in device_ids))

    def preferred(self, available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
        """``size`` IDs: ``must_include`` first, then by the policy (see the class)."""
        chosen = list(dict.fromkeys(must_include))[:size]
        taken_ids = set(chosen)
        free: dict[str, list[str]] = {}  # physical ID -> its free replicas, in request order
        order: dict[str, int] = {}
        taken: dict[str, int] = {}
        for rid in chosen:
            owner = self.physical_of(rid)
            taken[owner] = taken.get(owner, 0) + 1
        for rid in available:
            if rid in taken_ids:
                continue
            owner = self.physical_of(rid)
            order.setdefault(owner, len(order))
            free.setdefault(owner, []).append(rid)
        pack = self.policy == "pack"
        while len(chosen) < size and free:
            if pack:  # the device already used most, then the fullest one
                best = min(free, key=lambda o: (-taken.get(o, 0), len(free[o]), order[o]))
            else:  # the device used least, then the one with most free replicas
                best = min(free, key=lambda o: (taken.get(o, 0), -len(free[o]), order[o]))
            chosen.append(free[best].pop(0))
            taken[best] = taken.get(best, 0) + 1
            if not free[best]:
                del free[best]
        return chosen
