"""The kubelet emulator (built on our own transport) against a grpcio plugin and against sdplite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from grpcio_plugin import GrpcioDevicePlugin

from sdplite import Device, build
from sdplite.testing import KubeletEmulator

RESOURCE = "example.com/thing"


@pytest.fixture
def emulator(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(sock_dir) as kubelet:
        yield kubelet


@pytest.fixture
def grpcio_plugin(emulator: KubeletEmulator) -> Iterator[GrpcioDevicePlugin]:
    plugin = GrpcioDevicePlugin(os.path.join(emulator.directory, "grpcio.sock"), ["t0", "t1", "t2"])
    yield plugin
    plugin.stop()


def test_emulator_registers_a_grpcio_plugin_and_admits_a_pod(
    emulator: KubeletEmulator, grpcio_plugin: GrpcioDevicePlugin
) -> None:
    """Register (dial-back + options inside it), ListAndWatch, then admission:
    GetPreferredAllocation, Allocate and PreStartContainer, as the kubelet does."""
    grpcio_plugin.register(emulator.socket, RESOURCE, "grpcio.sock")
    resource = emulator.wait_for_devices(RESOURCE, count=3, healthy=3)
    assert resource.options.pre_start_required and resource.options.get_preferred_allocation_available
    admission = emulator.admit(RESOURCE, 2)
    assert admission.preferred == ["t2", "t1"] and admission.device_ids == ["t2", "t1"]
    assert dict(admission.response.envs) == {"GRPCIO_DEVICES": "t2,t1"}
    assert grpcio_plugin.pre_started == [["t2", "t1"]]
    with pytest.raises(RuntimeError, match="only 1 healthy unallocated"):
        emulator.admit(RESOURCE, 2)


def test_emulator_tracks_health_counts(emulator: KubeletEmulator, grpcio_plugin: GrpcioDevicePlugin) -> None:
    grpcio_plugin.register(emulator.socket, RESOURCE, "grpcio.sock")
    emulator.wait_for_devices(RESOURCE, healthy=3)
    grpcio_plugin.set_health("t1", "Unhealthy")
    resource = emulator.wait_for_devices(RESOURCE, count=3, healthy=2)
    assert resource.unhealthy == ["t1"] and resource.allocatable == 2


@pytest.mark.parametrize(
    "version,name,message",
    [
        (
            "v1alpha",
            RESOURCE,
            'requested API version "v1alpha" is not supported by kubelet. Supported version is ["v1beta1"]',
        ),
        ("v1beta1", "nodomain", 'the ResourceName "nodomain" is invalid'),
    ],
)
def test_emulator_refuses_with_the_kubelets_messages(
    emulator: KubeletEmulator, grpcio_plugin: GrpcioDevicePlugin, version: str, name: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        grpcio_plugin.register(emulator.socket, name, "grpcio.sock", version=version)
    assert info.value.code() == grpc.StatusCode.UNKNOWN and info.value.details() == message


def test_emulator_reports_a_failed_dial_back(
    emulator: KubeletEmulator, grpcio_plugin: GrpcioDevicePlugin
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        grpcio_plugin.register(emulator.socket, RESOURCE, "nobody-here.sock")
    assert info.value.details() == "failed to dial device plugin: context deadline exceeded"


def test_restart_deletes_plugin_sockets_but_not_the_checkpoint(
    emulator: KubeletEmulator, grpcio_plugin: GrpcioDevicePlugin
) -> None:
    checkpoint = os.path.join(emulator.directory, "kubelet_internal_checkpoint")
    with open(checkpoint, "w") as handle:
        handle.write("{}")
    grpcio_plugin.register(emulator.socket, RESOURCE, "grpcio.sock")
    resource = emulator.wait_for_devices(RESOURCE, count=3)
    emulator.restart()
    assert not os.path.exists(grpcio_plugin.path)
    assert os.path.exists(checkpoint) and os.path.exists(emulator.socket)
    assert not resource.connected and resource.allocatable == 0


def test_the_pytest_fixture_runs_an_emulator(sdplite_kubelet: KubeletEmulator) -> None:
    """What a user writes: the shipped fixture plus their plugin, in a few lines."""
    plugin = build(
        "example.com/x",
        "x.sock",
        lambda: [Device("a"), Device("b", healthy=False)],
        plugin_dir=sdplite_kubelet.directory,
    ).start()
    try:
        resource = sdplite_kubelet.wait_for_devices("example.com/x", count=2, healthy=1)
        assert dict(sdplite_kubelet.admit("example.com/x", 1).response.envs) == {}
        sdplite_kubelet.restart()
        sdplite_kubelet.wait_for_registration("example.com/x", count=2)
        assert resource.unhealthy == ["b"]
    finally:
        plugin.stop()
