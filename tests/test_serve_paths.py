"""``sdplite serve`` with plain globs: how a path reaches the container, and its device ID.

(Issue 13, items 7 and 8: mounts were always read-write with no way to place
them; two paths differing only by ``/`` against ``_`` shared an ID, and the
duplicate made the whole resource register with 0 devices.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from test_cli import start

from sdplite.testing import KubeletEmulator


@pytest.fixture
def emulator(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        yield kubelet


def make(*paths: str) -> None:
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()


def allocate_one(emulator: KubeletEmulator, resource: str) -> Any:
    found = emulator.wait_for_devices(resource, count=1, healthy=1, timeout=20)
    return emulator.allocate(resource, found.healthy).container_responses[0]


def test_mount_without_w_permission_is_read_only(tmp_path: Any, emulator: KubeletEmulator) -> None:
    data = os.path.join(str(tmp_path), "data.bin")
    make(data)
    serve = start(
        "serve", "--resource", f"example.com/data={data}", "--mount", "--permissions", "r",
        "--plugin-dir", emulator.directory,
    )  # fmt: skip
    try:
        (mount,) = allocate_one(emulator, "example.com/data").mounts
        assert (mount.host_path, mount.container_path, mount.read_only) == (data, data, True)
    finally:
        assert serve.stop() == 0


def test_mount_with_w_permission_stays_writable(tmp_path: Any, emulator: KubeletEmulator) -> None:
    data = os.path.join(str(tmp_path), "data.bin")
    make(data)
    config = os.path.join(str(tmp_path), "serve.json")
    with open(config, "w") as handle:
        json.dump({"resources": [{"name": "example.com/data", "paths": [data], "mount": True}]}, handle)
    serve = start("serve", "--config", config, "--plugin-dir", emulator.directory)
    try:
        (mount,) = allocate_one(emulator, "example.com/data").mounts
        assert mount.read_only is False
    finally:
        assert serve.stop() == 0


def test_container_path_places_mounts_and_nodes(tmp_path: Any, emulator: KubeletEmulator) -> None:
    """A container path ending in / is a directory: the file keeps its name in it."""
    data, tty = os.path.join(str(tmp_path), "data.bin"), os.path.join(str(tmp_path), "ttyUSB0")
    make(data, tty)
    config = os.path.join(str(tmp_path), "serve.json")
    with open(config, "w") as handle:
        json.dump(
            {
                "resources": [
                    {"name": "example.com/data", "paths": [data], "mount": True, "container_path": "/data/"},
                    {"name": "example.com/tty", "paths": [tty], "container_path": "/dev/console-tty"},
                ]
            },
            handle,
        )
    serve = start("serve", "--config", config, "--plugin-dir", emulator.directory)
    try:
        (mount,) = allocate_one(emulator, "example.com/data").mounts
        assert (mount.host_path, mount.container_path) == (data, "/data/data.bin")
        (node,) = allocate_one(emulator, "example.com/tty").devices
        assert (node.host_path, node.container_path, node.permissions) == (tty, "/dev/console-tty", "rw")
    finally:
        assert serve.stop() == 0


def test_paths_differing_by_slash_or_underscore_are_two_devices(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    base = os.path.join(str(tmp_path), "c")
    make(os.path.join(base, "a_b"), os.path.join(base, "a", "b"))
    serve = start(
        "serve", "--resource", f"example.com/c={base}/a_b,{base}/a/b", "--plugin-dir", emulator.directory
    )
    try:
        found = emulator.wait_for_devices("example.com/c", count=2, healthy=2, timeout=20)
        assert len(set(found.healthy)) == 2
        assert [i.endswith(("c_a_b", "c_a:_b")) for i in found.healthy] == [True, True]
    finally:
        assert serve.stop() == 0


def test_ids_of_paths_with_underscores_are_cdi_names(
    tmp_path: Any, emulator: KubeletEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The escape that keeps IDs apart uses only characters a CDI device name may hold."""
    tty = os.path.join(str(tmp_path), "by_id", "usb-FTDI_FT232R_A50285BI-if00")
    make(tty)
    monkeypatch.setenv("SDPLITE_CDI_DIR", os.path.join(str(tmp_path), "cdi"))
    serve = start(
        "serve", "--resource", f"example.com/tty={tty}", "--plugin-dir", emulator.directory, "--cdi"
    )
    try:
        found = emulator.wait_for_devices("example.com/tty", count=1, healthy=1, timeout=20)
        (device_id,) = found.healthy
        assert device_id.endswith("by:_id_usb-FTDI:_FT232R:_A50285BI-if00")
        answer = emulator.allocate("example.com/tty", [device_id]).container_responses[0]
        assert [c.name for c in answer.cdi_devices] == [f"example.com/tty={device_id}"]
    finally:
        assert serve.stop() == 0
