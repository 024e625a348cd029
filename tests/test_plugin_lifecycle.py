"""The framework against a grpcio kubelet stand-in: register, list, allocate, restart."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any, Callable

import grpc
import pytest

from sdplite import Allocation, Device, DeviceNode, Mount, PluginError, Watch, build
from sdplite.api import deviceplugin_pb2 as pb

from conftest import fd_count, thread_count, wait_until
from kubelet_standin import GrpcioKubelet

RESOURCE = "example.com/disk"


@pytest.fixture
def kubelet(sock_dir: str) -> Iterator[GrpcioKubelet]:
    k = GrpcioKubelet(sock_dir)
    yield k
    k.stop()


@pytest.fixture
def started() -> Iterator[Callable[..., Any]]:
    """start(plugin) runs it in the background and stops it after the test."""
    plugins: list[Any] = []

    def start(plugin: Any) -> Any:
        plugins.append(plugin.start())
        return plugin

    yield start
    for plugin in plugins:
        try:
            plugin.stop()
        except PluginError:
            pass


def health(devices: list[Any]) -> dict[str, str]:
    return {d.ID: d.health for d in devices}


def test_simple_mode_registers_and_lists_devices(kubelet: GrpcioKubelet, started: Any) -> None:
    """build(resource, socket, get_devices): served, registered, first list is the devices."""
    plugin = started(
        build(
            RESOURCE,
            "disk.sock",
            lambda: [Device("d0", numa_nodes=[1]), Device("d1", healthy=False)],
            plugin_dir=kubelet.directory,
        )
    )
    endpoint = kubelet.wait_for_registration(RESOURCE)
    request = kubelet.registrations[0]
    assert (request.version, request.endpoint, request.resource_name) == ("v1beta1", "disk.sock", RESOURCE)
    assert request.options == endpoint.options == pb.DevicePluginOptions()
    devices = kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 2)
    assert health(devices) == {"d0": "Healthy", "d1": "Unhealthy"}
    assert [n.ID for n in devices[0].topology.nodes] == [1]
    assert plugin.wait_registered(5)


def test_health_goes_unhealthy_and_back(kubelet: GrpcioKubelet, started: Any) -> None:
    plugin = started(build(RESOURCE, "disk.sock", lambda: ["a", "b"], plugin_dir=kubelet.directory))
    kubelet.wait_for_devices(RESOURCE, lambda d: health(d) == {"a": "Healthy", "b": "Healthy"})
    plugin.set_health("b", False)
    kubelet.wait_for_devices(RESOURCE, lambda d: health(d) == {"a": "Healthy", "b": "Unhealthy"})
    plugin.set_health("b", True)
    kubelet.wait_for_devices(RESOURCE, lambda d: health(d) == {"a": "Healthy", "b": "Healthy"})
    with pytest.raises(KeyError):
        plugin.set_health("nope", True)


def test_simple_mode_rescans_and_pushes_only_changes(kubelet: GrpcioKubelet, started: Any) -> None:
    current = ["a"]
    plugin = started(
        build(RESOURCE, "disk.sock", lambda: list(current), plugin_dir=kubelet.directory, interval=3600)
    )
    endpoint = kubelet.wait_for_registration(RESOURCE)
    kubelet.wait_for_devices(RESOURCE, lambda d: health(d) == {"a": "Healthy"})
    sent = len(endpoint.lists)
    plugin.rescan()  # same list: nothing is sent
    current.append("b")
    plugin.rescan()
    kubelet.wait_for_devices(RESOURCE, lambda d: set(health(d)) == {"a", "b"})
    assert len(endpoint.lists) == sent + 1


def test_simple_mode_keeps_the_last_good_list_when_get_devices_fails(
    kubelet: GrpcioKubelet, started: Any, caplog: Any
) -> None:
    answers: list[Any] = [["a"], ["a", "a"], RuntimeError("scan failed"), "not a list", ["a", "c"]]

    def get_devices() -> Any:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    plugin = started(build(RESOURCE, "disk.sock", get_devices, plugin_dir=kubelet.directory, interval=3600))
    kubelet.wait_for_devices(RESOURCE, lambda d: set(health(d)) == {"a"})
    for left in (3, 2, 1):  # rescans that overlap coalesce, so take one at a time
        plugin.rescan()
        wait_until(lambda n=left: len(answers) == n, what="get_devices to be called")
    plugin.rescan()
    kubelet.wait_for_devices(RESOURCE, lambda d: set(health(d)) == {"a", "c"})
    text = caplog.text
    assert "appears twice" in text and "scan failed" in text and "not a str" in text


def test_default_allocate_builds_container_responses_from_device_data(
    kubelet: GrpcioKubelet, started: Any
) -> None:
    devices = [
        Device(
            "d0",
            nodes=[DeviceNode("/dev/sdb", "/dev/xvdb", "r")],
            mounts=[Mount("/opt/d0")],
            envs={"DISKS": "sdb"},
            annotations={"a": "1"},
            cdi_devices=["example.com/disk=d0"],
        ),
        Device("d1", nodes=[DeviceNode("/dev/sdc")], envs={"DISKS": "sdc"}),
        Device("sick", healthy=False),
    ]
    started(build(RESOURCE, "disk.sock", lambda: devices, plugin_dir=kubelet.directory))
    kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 3)
    response = kubelet.allocate(RESOURCE, ["d0", "d1"], ["d1"])
    first, second = response.container_responses
    assert dict(first.envs) == {"DISKS": "sdb,sdc"}
    assert dict(first.annotations) == {"a": "1"}
    assert [(d.host_path, d.container_path, d.permissions) for d in first.devices] == [
        ("/dev/sdb", "/dev/xvdb", "r"),
        ("/dev/sdc", "/dev/sdc", "rw"),
    ]
    assert [(m.host_path, m.container_path, m.read_only) for m in first.mounts] == [
        ("/opt/d0", "/opt/d0", True)
    ]
    assert [c.name for c in first.cdi_devices] == ["example.com/disk=d0"]
    assert dict(second.envs) == {"DISKS": "sdc"}
    for bad, why in ((["nope"], "unknown device IDs ['nope']"), (["sick"], "unhealthy devices ['sick']")):
        with pytest.raises(grpc.RpcError) as info:
            kubelet.allocate(RESOURCE, bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in info.value.details()


class Flexible:
    """Every optional hook, counting the calls."""

    def __init__(self) -> None:
        self.refreshed = 0
        self.destroyed = 0
        self.pre_started: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def list_and_watch(self, watch: Watch) -> None:
        watch.send(
            [
                Device("g0", envs={"G": "0"}),
                Device("g1", envs={"G": "1"}),
                pb.Device(ID="g2", health="Healthy"),
            ]
        )
        watch.wait()

    def allocate(self, device_ids: list[str]) -> Any:
        if device_ids == ["g1"]:
            return pb.ContainerAllocateResponse(envs={"RAW": "yes"})
        if device_ids == ["g2"]:
            return Allocation(envs={"FRIENDLY": "yes"})
        if device_ids == ["bad"]:
            return 42
        return None  # the default, from the devices' data

    def get_preferred_allocation(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        rest = [d for d in sorted(available, reverse=True) if d not in must_include]
        return (must_include + rest)[:size]

    def pre_start_container(self, device_ids: list[str]) -> None:
        self.release.wait()
        self.pre_started.append(device_ids)

    def refresh(self) -> None:
        self.refreshed += 1

    def destroy(self) -> None:
        self.destroyed += 1


def test_flexible_mode_every_hook(kubelet: GrpcioKubelet, started: Any) -> None:
    impl = Flexible()
    started(build(RESOURCE, "flex.sock", impl, plugin_dir=kubelet.directory))
    endpoint = kubelet.wait_for_registration(RESOURCE)
    expected = pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)
    assert endpoint.options == expected and kubelet.registrations[0].options == expected
    assert impl.refreshed == 1
    kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 3)
    assert dict(kubelet.allocate(RESOURCE, ["g0"]).container_responses[0].envs) == {"G": "0"}
    assert dict(kubelet.allocate(RESOURCE, ["g1"]).container_responses[0].envs) == {"RAW": "yes"}
    assert dict(kubelet.allocate(RESOURCE, ["g2"]).container_responses[0].envs) == {"FRIENDLY": "yes"}
    with pytest.raises(grpc.RpcError) as info:
        kubelet.allocate(RESOURCE, ["bad"])
    assert info.value.code() == grpc.StatusCode.INTERNAL and "returned a int" in info.value.details()
    preferred = kubelet.preferred(RESOURCE, ["g0", "g1", "g2"], ["g0"], 2)
    assert list(preferred.container_responses[0].deviceIDs) == ["g0", "g2"]
    kubelet.pre_start(RESOURCE, ["g0", "g1"])  # the kubelet's 30 s deadline
    assert impl.pre_started == [["g0", "g1"]]
    impl.release.clear()
    with pytest.raises(grpc.RpcError) as info:
        kubelet.pre_start(RESOURCE, ["g2"], timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    impl.release.set()


def test_get_preferred_allocation_is_unimplemented_when_not_offered(
    kubelet: GrpcioKubelet, started: Any
) -> None:
    started(build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=kubelet.directory))
    kubelet.wait_for_registration(RESOURCE)
    with pytest.raises(grpc.RpcError) as info:
        kubelet.preferred(RESOURCE, ["a"], [], 1)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert kubelet.pre_start(RESOURCE, ["a"]) == pb.PreStartContainerResponse()


def test_twenty_kubelet_restarts(kubelet: GrpcioKubelet, started: Any) -> None:
    """Each restart wipes our socket; we re-serve, re-register and send a fresh first list.

    Threads and fds come back to where they were after the first registration.
    """
    impl = Flexible()
    started(build(RESOURCE, "flex.sock", impl, plugin_dir=kubelet.directory))
    kubelet.wait_for_registration(RESOURCE)
    kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 3)
    threads, fds = thread_count(), fd_count()
    for i in range(20):
        kubelet.restart()
        endpoint = kubelet.wait_for_registration(RESOURCE, count=i + 2)
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 3)
        assert endpoint.lists[0] and len(endpoint.lists[0]) == 3, "a fresh stream starts with the full list"
        assert kubelet.allocate(RESOURCE, ["g0"]).container_responses
    assert impl.refreshed == 21 and impl.destroyed == 20
    wait_until(
        lambda: thread_count() <= threads and fd_count() <= fds,
        what=f"threads {thread_count()}->{threads}, fds {fd_count()}->{fds}",
    )


def test_plugin_waits_for_a_kubelet_that_is_not_there_yet(sock_dir: str, started: Any) -> None:
    plugin = started(build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=sock_dir))
    wait_until(lambda: os.path.exists(os.path.join(sock_dir, "disk.sock")), what="our socket")
    assert not plugin.registered
    kubelet = GrpcioKubelet(sock_dir)
    try:
        kubelet.wait_for_registration(RESOURCE)
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 1)
    finally:
        kubelet.stop()


def test_a_registration_the_kubelet_refuses_for_good_stops_the_plugin(sock_dir: str, started: Any) -> None:
    kubelet = GrpcioKubelet(sock_dir)
    kubelet.refuse_with = 'requested API version "v1beta1" is not supported by kubelet'
    try:
        plugin = started(build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=sock_dir))
        wait_until(lambda: plugin.error is not None, what="the plugin to give up")
        assert "not supported by kubelet" in plugin.error
        with pytest.raises(PluginError, match="refused to register"):
            plugin.stop()
        assert not os.path.exists(plugin.socket_path)
    finally:
        kubelet.stop()


def test_stale_socket_is_replaced_but_a_live_one_is_not(kubelet: GrpcioKubelet, started: Any) -> None:
    path = os.path.join(kubelet.directory, "disk.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    started(build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=kubelet.directory))
    kubelet.wait_for_registration(RESOURCE)
    other = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=kubelet.directory).start()
    wait_until(lambda: other.error is not None, what="the second plugin to refuse the live socket")
    assert "another process is serving" in other.error
    with pytest.raises(PluginError):
        other.stop()
    assert os.path.exists(path), "a live socket must never be removed"


def test_several_plugins_in_one_process(kubelet: GrpcioKubelet) -> None:
    from sdplite.supervisor import BackgroundRunner

    disks = build("example.com/disk", "disk.sock", lambda: ["d"], plugin_dir=kubelet.directory)
    nics = build("example.com/nic", "nic.sock", lambda: ["n0", "n1"], plugin_dir=kubelet.directory)
    runner = BackgroundRunner([disks, nics])
    try:
        kubelet.wait_for_devices("example.com/disk", lambda d: len(d) == 1)
        kubelet.wait_for_devices("example.com/nic", lambda d: len(d) == 2)
        kubelet.restart()
        kubelet.wait_for_registration("example.com/disk", count=2)
        kubelet.wait_for_registration("example.com/nic", count=2)
    finally:
        runner.stop()
    assert not os.path.exists(disks.socket_path) and not os.path.exists(nics.socket_path)
