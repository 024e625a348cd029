"""The ``sdplite_kubelet`` pytest fixture (registered through the pytest11 entry point).

def test_my_plugin(sdplite_kubelet):
    plugin = build("example.com/x", "x.sock", get_devices,
                   plugin_dir=sdplite_kubelet.directory).start()
    try:
        sdplite_kubelet.wait_for_devices("example.com/x", count=2)
    finally:
        plugin.stop()
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from .emulator import KubeletEmulator


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
