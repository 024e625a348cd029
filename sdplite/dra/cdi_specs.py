"""CDI specs for prepared claims: what a container that uses a claim gets, as the runtime reads it.

The kubelet hands the container runtime the CDI IDs a DRA driver returns for
a claim; the runtime looks them up in the spec files of ``/var/run/cdi``. So
each prepared claim gets one spec file of its own, written atomically and
removed at unprepare, built by :mod:`sdplite.cdi` from each device's container
edits (the prepare hook's :class:`~sdplite.Allocation`, or the device's own
data). Kind ``k8s.<driver>/claim``, one entry per device named
``<claim UID>-<device>``: a name is never reused for other content (runtimes
cache specs), and two claims never clash. docs/design.md, "Dynamic Resource
Allocation", has the rules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

from .. import cdi
from ..devices import Allocation, Device

__all__ = ["ClaimSpecs"]


class ClaimSpecs:
    """One CDI spec file per claim in ``directory`` (default ``$SDPLITE_CDI_DIR`` or /var/run/cdi)."""

    def __init__(self, driver: str, directory: Optional[str] = None) -> None:
        self.kind = cdi.kind_for(f"k8s.{driver}/claim")
        self.directory = directory or os.environ.get("SDPLITE_CDI_DIR") or cdi.DEFAULT_CDI_DIR

    def __repr__(self) -> str:
        return f"ClaimSpecs({self.kind!r}, {self.directory!r})"

    def file_name(self, claim_uid: str) -> str:
        return f"{self.kind.replace('/', '-')}_{claim_uid}.json"

    def path(self, claim_uid: str) -> str:
        return os.path.join(self.directory, self.file_name(claim_uid))

    def write(
        self, claim_uid: str, edits: Sequence[tuple[str, Allocation]]
    ) -> tuple[Optional[dict[str, Any]], dict[str, list[str]]]:
        """Write the claim's spec; return it (None if no device has edits) and the CDI IDs per device."""
        devices = [
            Device(f"{claim_uid}-{name}", nodes=a.nodes, mounts=a.mounts, envs=a.envs) for name, a in edits
        ]
        spec = cdi.build_spec(self.kind, devices)
        if not spec["devices"]:
            self.remove(claim_uid)
            return None, {}
        cdi.write_spec(spec, self.directory, self.file_name(claim_uid))
        ids = {
            name: [cdi.qualified_name(self.kind, device.id)]
            for (name, _), device in zip(edits, devices)
            if cdi.has_entry(device)
        }
        return spec, ids

    def rewrite(self, claim_uid: str, spec: dict[str, Any]) -> None:
        """Write a spec again if its file is gone (a reboot empties /var/run)."""
        if not os.path.exists(self.path(claim_uid)):
            cdi.write_spec(spec, self.directory, self.file_name(claim_uid))

    def remove(self, claim_uid: str) -> None:
        cdi.remove_spec(self.path(claim_uid))
