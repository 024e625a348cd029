"""Static costs of each stack: import time in a fresh interpreter, and installed size on disk.

Import time is taken inside a fresh ``python`` (interpreter start-up and
the harness's shared ``common`` module excluded), around exactly what each
plugin script imports of its stack. Installed size sums the files each
distribution's RECORD lists (``__pycache__`` left out everywhere, since
byte-code is a by-product of running, not of installing); sdplite, which is
installed editable here, is measured as its package directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys

from session import PLUGINS_DIR, child_env

#: What each plugin imports of its stack (grpcio and grpclib also load the generated messages).
IMPORTS = {
    "sdplite": "import sdplite",
    "grpcio": "import grpc; common.load_deviceplugin_pb2()",
    "grpclib": (
        "import grpclib.client, grpclib.const, grpclib.exceptions, grpclib.server; "
        "common.load_deviceplugin_pb2()"
    ),
}

#: The distributions a plugin on each stack needs at run time (their own requirements are added).
STACKS = {
    "sdplite": ["sdplite"],
    "grpcio": ["grpcio", "protobuf"],  # protobuf: grpcio needs it for the generated messages
    "grpclib": ["grpclib", "protobuf"],  # protobuf is a grpclib extra, but a plugin needs it
}

_TIMER = (
    "import sys, time; sys.path.insert(0, {plugins!r}); import common; "
    "started = time.perf_counter(); {snippet}; print(time.perf_counter() - started)"
)


def import_seconds(impl: str) -> float:
    """One fresh interpreter's time to import ``impl``'s stack."""
    code = _TIMER.format(plugins=PLUGINS_DIR, snippet=IMPORTS[impl])
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=os.sep, env=child_env()
    ).stdout
    return float(out.strip().splitlines()[-1])


def _requirement_names(dist: importlib.metadata.Distribution) -> list[str]:
    """Names of the distribution's unconditional requirements (extras skipped, markers evaluated)."""
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        if marker.strip():
            try:
                from packaging.markers import Marker

                if not Marker(marker).evaluate():
                    continue
            except ImportError:  # no packaging: count it, which can only make a stack bigger
                pass
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name:
            names.append(name.group(0))
    return names


def closure(roots: list[str]) -> list[str]:
    """The roots and everything they require at run time, as installed distribution names."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[key] = dist.metadata["Name"]
        todo.extend(_requirement_names(dist))
    return sorted(seen.values(), key=str.lower)


def _package_dir_bytes(package: str) -> int:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    total = 0
    for root, dirs, files in os.walk(list(spec.submodule_search_locations)[0]):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def distribution_bytes(name: str) -> int:
    if name.lower() == "sdplite":
        return _package_dir_bytes("sdplite")
    dist = importlib.metadata.distribution(name)
    total = 0
    for entry in dist.files or []:
        if "__pycache__" in entry.parts:
            continue
        path = entry.locate()
        if os.path.isfile(path):
            total += os.path.getsize(path)
    return total


def installed(impl: str) -> tuple[float, list[str]]:
    """Installed size in MiB of ``impl``'s run-time distributions, and their names."""
    names = closure(STACKS[impl])
    return sum(distribution_bytes(n) for n in names) / 2**20, names
