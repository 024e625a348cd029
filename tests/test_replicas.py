"""Replicas: one physical device advertised as N IDs, mapped back in Allocate, healthy or not together.

The kubelet side is sdplite's kubelet emulator here; tests/interop/spec.py
holds the same behaviour to grpc-go and grpc-js kubelets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from state_support import watched

from sdplite import Allocation, Device, DeviceListError, DeviceNode, Mount, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.replicas import Replicas, replica_id
from sdplite.service import DeviceState
from sdplite.testing import KubeletEmulator

RESOURCE = "example.com/shared-gpu"
GPUS = [
    Device(
        "gpu-0",
        numa_nodes=[0],
        nodes=[DeviceNode("/dev/null", "/dev/gpu0"), DeviceNode("/dev/zero", "/dev/gpuctl")],
        mounts=[Mount("/opt/driver")],
        envs={"GPU": "0"},
        cdi_devices=["example.com/gpu=gpu-0"],
    ),
    Device(
        "gpu-1",
        numa_nodes=[1],
        nodes=[DeviceNode("/dev/full", "/dev/gpu1"), DeviceNode("/dev/zero", "/dev/gpuctl")],
        mounts=[Mount("/opt/driver")],
        envs={"GPU": "1"},
        cdi_devices=["example.com/gpu=gpu-1"],
    ),
]


class Gpus:
    """Sends the list once; health then comes only through set_health."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices
        self.allocated: list[list[str]] = []

    def list_and_watch(self, watch: Any) -> None:
        watch.send(self.devices)
        watch.wait()


class AllocatingGpus(Gpus):
    def allocate(self, device_ids: list[str]) -> Allocation:
        self.allocated.append(device_ids)
        return Allocation(envs={"VISIBLE": ",".join(device_ids)})


@pytest.fixture
def kubelet(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(sock_dir) as emulator:
        yield emulator


# -- the mapping ---------------------------------------------------------------------


def test_expand_names_replicas_stably_and_carries_everything() -> None:
    replicas = Replicas(3)
    expanded = replicas.expand(GPUS)
    assert [d.id for d in expanded] == [replica_id(g, i) for g in ("gpu-0", "gpu-1") for i in range(3)]
    assert replica_id("gpu-0", 2) == "gpu-0::2"
    for device in expanded:
        physical = GPUS[int(device.id[4])]
        assert (device.numa_nodes, device.nodes, device.mounts, device.envs, device.cdi_devices) == (
            physical.numa_nodes,
            physical.nodes,
            physical.mounts,
            physical.envs,
            physical.cdi_devices,
        )
    assert replicas.physical_ids(["gpu-1::2", "gpu-0::0", "gpu-1::0"]) == ["gpu-1", "gpu-0"]
    assert replicas.ids_of("gpu-1") == ("gpu-1::0", "gpu-1::1", "gpu-1::2")
    with pytest.raises(KeyError, match="'gpu-1::1' is a replica of 'gpu-1'"):
        replicas.ids_of("gpu-1::1")


def test_per_device_counts_and_bad_counts() -> None:
    by_memory = Replicas(lambda d: 4 if d.id == "gpu-0" else 1)
    expanded = [d.id for d in by_memory.expand(GPUS)]
    assert expanded == ["gpu-0::0", "gpu-0::1", "gpu-0::2", "gpu-0::3", "gpu-1::0"]
    with pytest.raises(DeviceListError, match=r"replicas must be an int >= 1, not 0"):
        Replicas(0)
    with pytest.raises(DeviceListError, match=r"replicas\('gpu-0'\) must be an int >= 1, not 'x'"):
        Replicas(lambda d: "x").expand(GPUS)
    with pytest.raises(ValueError, match="policy"):
        Replicas(2, policy="random")
    state = DeviceState("example.com/x", Replicas(2))
    state.publish([Device("a"), Device("a::1")])  # unique: the last "::" splits every replica ID one way
    assert [d.id for d in state.devices] == ["a::0", "a::1", "a::1::0", "a::1::1"]


def test_preferred_spreads_or_packs_across_physical_devices() -> None:
    spread, pack = Replicas(3), Replicas(3, policy="pack")
    three = [Device(f"g{i}") for i in range(3)]
    spread.expand(three)
    pack.expand(three)
    free = ["g0::0", "g0::1", "g1::1", "g1::2", "g2::0", "g2::1", "g2::2"]  # g0: 2 free, g1: 2, g2: 3
    assert spread.preferred(free, [], 3) == ["g2::0", "g0::0", "g1::1"]  # least used first, one each
    assert spread.preferred(free, ["g0::1"], 2) == ["g0::1", "g2::0"]  # g0 is used by must_include
    assert pack.preferred(free, [], 3) == ["g0::0", "g0::1", "g1::1"]  # fullest device first, filled up
    assert pack.preferred(free, ["g2::2"], 3) == ["g2::2", "g2::0", "g2::1"]
    assert spread.preferred(free, [], 10) == spread.preferred(free, [], 7), "never more than available"


# -- state: health of a physical device moves all its replicas at once ---------------------------


def test_a_physical_devices_health_changes_all_replicas_in_one_push() -> None:
    state, watcher = watched(GPUS, Replicas(4))
    assert state.set_health("gpu-1", False, "Xid 79: fell off the bus")
    assert len(watcher.sent) == 2, "one push for four replicas"
    sent = pb.ListAndWatchResponse.FromString(watcher.sent[-1])
    assert [d.ID for d in sent.devices if d.health == "Unhealthy"] == [f"gpu-1::{i}" for i in range(4)]
    assert [(d.id, d.healthy, d.reason) for d in state.physical_devices] == [
        ("gpu-0", True, None),
        ("gpu-1", False, "Xid 79: fell off the bus"),
    ]
    with pytest.raises(KeyError, match="replica of 'gpu-1'"):
        state.set_health("gpu-1::0", True)


# -- with a kubelet --------------------------------------------------------------------


def test_replicas_through_the_kubelet(kubelet: KubeletEmulator) -> None:
    plugin = build(RESOURCE, "shared.sock", Gpus(GPUS), plugin_dir=kubelet.directory, replicas=2)
    with plugin:
        resource = kubelet.wait_for_devices(RESOURCE, count=4)
        assert [(d.ID, [n.ID for n in d.topology.nodes]) for d in resource.devices] == [
            ("gpu-0::0", [0]),
            ("gpu-0::1", [0]),
            ("gpu-1::0", [1]),
            ("gpu-1::1", [1]),
        ]
        assert resource.options.get_preferred_allocation_available, "the default policy is offered"
        (answer,) = kubelet.allocate(RESOURCE, ["gpu-0::0", "gpu-0::1", "gpu-1::1"]).container_responses
        assert [(d.host_path, d.container_path) for d in answer.devices] == [
            ("/dev/null", "/dev/gpu0"),
            ("/dev/zero", "/dev/gpuctl"),
            ("/dev/full", "/dev/gpu1"),
        ], "each node once"
        assert [m.host_path for m in answer.mounts] == ["/opt/driver"]
        assert dict(answer.envs) == {"GPU": "0,1"}
        assert [c.name for c in answer.cdi_devices] == ["example.com/gpu=gpu-0", "example.com/gpu=gpu-1"]
        admission = kubelet.admit(RESOURCE, 2)
        assert admission.preferred == ["gpu-0::0", "gpu-1::0"], "spread over both GPUs"
        lists = resource.lists_received
        plugin.set_health("gpu-0", False, "ECC errors")
        kubelet.wait_for_devices(RESOURCE, healthy=2)
        assert resource.unhealthy == ["gpu-0::0", "gpu-0::1"]
        assert resource.lists_received == lists + 1, "both replicas in one ListAndWatch message"
        with pytest.raises(Exception, match="cannot allocate unhealthy devices"):
            kubelet.allocate(RESOURCE, ["gpu-0::1"])


def test_allocate_hook_gets_the_physical_devices(kubelet: KubeletEmulator) -> None:
    gpus = AllocatingGpus(GPUS)
    plugin = build(
        RESOURCE, "shared.sock", gpus, plugin_dir=kubelet.directory, replicas=3, replica_policy="pack"
    )
    with plugin:
        kubelet.wait_for_devices(RESOURCE, count=6)
        answer = kubelet.allocate(RESOURCE, ["gpu-1::2", "gpu-1::0", "gpu-0::1"]).container_responses[0]
        assert gpus.allocated == [["gpu-1", "gpu-0"]]
        assert dict(answer.envs) == {"VISIBLE": "gpu-1,gpu-0"}
        assert kubelet.admit(RESOURCE, 2).preferred == ["gpu-0::0", "gpu-0::1"], "packed onto one GPU"
