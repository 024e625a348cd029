"""The ``sdplite_kubelet`` and ``sdplite_dra`` pytest fixtures (registered through the pytest11 entry point).

def test_my_plugin(sdplite_kubelet):
    plugin = build("example.com/x", "x.sock", get_devices,
                   plugin_dir=sdplite_kubelet.directory).start()
    try:
        sdplite_kubelet.wait_for_devices("example.com/x", count=2)
    finally:
        plugin.stop()

def test_my_dra_driver(sdplite_dra):
    driver = dra.build("gpu.example.com", devices=gpus, **sdplite_dra.options()).start()
    try:
        sdplite_dra.kubelet.wait_for_registration("gpu.example.com")
        claim = sdplite_dra.claim("gpu.example.com", ["gpu-0"])
        assert sdplite_dra.prepare("gpu.example.com", claim)[claim[1]]["error"] == ""
    finally:
        driver.stop()
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .emulator import KubeletEmulator

if TYPE_CHECKING:
    from .dra import DraTestbed


@pytest.fixture
def sdplite_kubelet() -> Iterator[KubeletEmulator]:
    """A kubelet emulator serving kubelet.sock in a fresh, short temporary directory."""
    # A short path: Unix socket paths must fit in 107 bytes, which pytest's
    # tmp_path does not promise.
    directory = tempfile.mkdtemp(prefix="sdplite-")
    emulator = KubeletEmulator(directory).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sdplite_dra() -> Iterator[DraTestbed]:
    """The kubelet's DRA side and an API server, for a DRA driver built with ``**sdplite_dra.options()``."""
    from .dra import DraTestbed  # here: a device-plugin test run need not load DRA

    with DraTestbed() as bed:
        yield bed
