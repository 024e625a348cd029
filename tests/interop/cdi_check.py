"""The CDI library runtimes use, as a judge of the spec files sdplite writes.

``tests/interop/cdi`` is a small Go program built (GOPATH mode, cached) by
tests/interop/build_cdi.sh against Debian's container-device-interface
package: it loads a spec directory as containerd and CRI-O do, and resolves
CDI names into OCI spec edits. A missing toolchain is an error, never a skip.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def cdi_check_binary() -> str:
    build = subprocess.run(
        ["bash", os.path.join(HERE, "build_cdi.sh")], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0:
        raise RuntimeError(f"building the CDI checker failed:\n{build.stderr}")
    return build.stdout.strip().splitlines()[-1]


def load(directory: str, names: Sequence[str] = ()) -> dict[str, Any]:
    """What the CDI library makes of ``directory``: errors, devices, versions, and each name's edits."""
    run = subprocess.run(
        [cdi_check_binary(), "-dir", directory, *names], capture_output=True, text=True, timeout=60
    )
    if run.returncode != 0:
        raise RuntimeError(f"cdi-check failed ({run.returncode}):\n{run.stderr}")
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def oci_edits(spec: dict[str, Any]) -> dict[str, Any]:
    """The parts of an OCI spec a CDI device changes, in a form easy to compare."""
    linux = spec.get("linux") or {}
    return {
        "env": sorted((spec.get("process") or {}).get("env") or []),
        "devices": sorted((d["path"], d["type"], d["major"], d["minor"]) for d in linux.get("devices") or []),
        "cgroup": sorted(
            (d["type"], d["major"], d["minor"], d["access"])
            for d in (linux.get("resources") or {}).get("devices") or []
        ),
        "mounts": sorted(
            (m["destination"], m["source"], tuple(m.get("options") or ())) for m in spec.get("mounts") or []
        ),
    }
