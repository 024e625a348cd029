"""What the plugin was told (set_health, publish) survives server and kubelet restarts.

Written from docs/guide.md's Health section, against the ``sdplite_kubelet``
fixture: a ``list_and_watch`` that sends once and waits, ``set_health`` for
changes, then a kubelet restart (sockets wiped, kubelet.sock re-created) or a
server restart. The grpc-go kubelet runs the same story in tests/interop/spec.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from sdplite import Device, build
from sdplite.testing import KubeletEmulator

RESOURCE = "example.com/nic"


class Nics:
    def list_and_watch(self, watch: Any) -> None:
        watch.send([Device("nic-0"), Device("nic-1")])
        watch.wait()  # nothing more to send: health comes through set_health


def restart(kind: str, kubelet: KubeletEmulator, plugin: Any, registrations: int) -> None:
    if kind == "kubelet":
        kubelet.restart()
    else:
        plugin.restart("test")
    kubelet.wait_for_registration(RESOURCE, count=registrations)


@pytest.mark.parametrize("kind", ["kubelet", "server"])
def test_set_health_survives_restarts_in_flexible_mode(sdplite_kubelet: KubeletEmulator, kind: str) -> None:
    nics = build(RESOURCE, "nic.sock", Nics(), plugin_dir=sdplite_kubelet.directory).start()
    try:
        sdplite_kubelet.wait_for_devices(RESOURCE, healthy=2)
        nics.set_health("nic-1", False)
        sdplite_kubelet.wait_for_devices(RESOURCE, healthy=1)
        for n in (2, 3):
            restart(kind, sdplite_kubelet, nics, n)
            resource = sdplite_kubelet.wait_for_devices(RESOURCE, count=2)
            assert resource.unhealthy == ["nic-1"] and resource.allocatable == 1
        nics.set_health("nic-1", True)  # and back, which survives too
        restart(kind, sdplite_kubelet, nics, 4)
        assert sdplite_kubelet.wait_for_devices(RESOURCE, count=2).unhealthy == []
    finally:
        nics.stop()


def test_set_health_survives_a_kubelet_restart_in_simple_mode(sdplite_kubelet: KubeletEmulator) -> None:
    plugin = build(RESOURCE, "nic.sock", lambda: ["nic-0", "nic-1"], plugin_dir=sdplite_kubelet.directory)
    with plugin:
        sdplite_kubelet.wait_for_devices(RESOURCE, healthy=2)
        plugin.set_health("nic-0", False)
        plugin.rescan()  # the same list again changes nothing
        sdplite_kubelet.wait_for_devices(RESOURCE, healthy=1)
        restart("kubelet", sdplite_kubelet, plugin, 2)
        assert sdplite_kubelet.wait_for_devices(RESOURCE, count=2).unhealthy == ["nic-0"]


def test_a_published_list_survives_a_kubelet_restart(sdplite_kubelet: KubeletEmulator) -> None:
    with build(RESOURCE, "nic.sock", Nics(), plugin_dir=sdplite_kubelet.directory) as nics:
        sdplite_kubelet.wait_for_devices(RESOURCE, count=2)
        nics.publish([Device("nic-0"), Device("nic-1", healthy=False), Device("nic-2")])
        sdplite_kubelet.wait_for_devices(RESOURCE, count=3)
        restart("kubelet", sdplite_kubelet, nics, 2)
        resource = sdplite_kubelet.wait_for_devices(RESOURCE, count=3)
        assert resource.healthy == ["nic-0", "nic-2"] and resource.unhealthy == ["nic-1"]
