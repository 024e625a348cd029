"""Bad input is refused early, with a message that says what to fix."""

from __future__ import annotations

import dataclasses

import pytest

from sdplite import Allocation, Device, DeviceListError, DeviceNode, InvalidNameError, Mount, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.devices import encode_device_list, normalize_devices
from sdplite.naming import validate_resource_name, validate_socket_name


@pytest.mark.parametrize("name", ["example.com/foo", "a.b-c.io/Foo_bar.1", "x/y", "example.com/" + "a" * 63])
def test_resource_names_the_kubelet_accepts(name: str) -> None:
    assert validate_resource_name(name) == name


@pytest.mark.parametrize(
    "name,why",
    [
        ("foo", "no domain prefix"),
        ("Example.com/foo", "lower-case DNS subdomain"),
        ("a.kubernetes.io/x", "reserved kubernetes.io"),
        ("kubernetes.io/x", "reserved kubernetes.io"),
        ("example.com/-x", "starting and ending"),
        ("example.com/a/b", "more than one '/'"),
        ("requests.example.com/x", "must not start with 'requests.'"),
        ("example.com/", "1-63 characters"),
        ("example.com/" + "a" * 64, "1-63 characters"),
        ("a" * 245 + "/x", "at most 244"),
    ],
)
def test_resource_names_the_kubelet_rejects(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match=why.replace("(", r"\(")):
        validate_resource_name(name)


def test_socket_names() -> None:
    assert validate_socket_name("gpu.sock", "/var/lib/kubelet/device-plugins") == (
        "/var/lib/kubelet/device-plugins/gpu.sock"
    )
    for bad, why in [
        ("a/b.sock", "without a path separator"),
        ("", "non-empty"),
        ("..", "without a path separator"),
        ("kubelet.sock", "kubelet's own"),
        ("x" * 100 + ".sock", "Unix sockets allow 107"),
    ]:
        with pytest.raises(InvalidNameError, match=why):
            validate_socket_name(bad, "/var/lib/kubelet/device-plugins")


def test_device_lists_accept_three_forms() -> None:
    devices = normalize_devices(["a", Device("b", healthy=False), pb.Device(ID="c", health="Unhealthy")])
    assert [(d.id, d.healthy) for d in devices] == [("a", True), ("b", False), ("c", False)]


@pytest.mark.parametrize(
    "devices,why",
    [
        (["a", "a"], "appears twice"),
        (["a", ""], "empty ID"),
        ([Device("a"), 3], "device #1 is a int"),
        ("abc", "must be a list"),
        (None, "must be a list"),
        ([Device("a", numa_nodes=[-1])], "NUMA nodes are ints >= 0"),
    ],
)
def test_bad_device_lists(devices: object, why: str) -> None:
    with pytest.raises(DeviceListError, match=why):
        normalize_devices(devices)


def test_a_list_over_the_kubelets_4_mib_limit_is_refused() -> None:
    devices = [Device(f"{i:040d}", numa_nodes=[0]) for i in range(80_000)]
    with pytest.raises(DeviceListError, match="over the kubelet's 4 MiB limit"):
        encode_device_list(devices)
    assert len(encode_device_list(devices[:70_000])) < 4 * 1024 * 1024


def test_build_refuses_bad_arguments(tmp_path: object) -> None:
    with pytest.raises(InvalidNameError):
        build("nodomain", "x.sock", lambda: [], plugin_dir="/tmp")
    with pytest.raises(InvalidNameError):
        build("example.com/x", "a/x.sock", lambda: [], plugin_dir="/tmp")
    with pytest.raises(TypeError, match="get_devices callable or an object with list_and_watch"):
        build("example.com/x", "x.sock", 42, plugin_dir="/tmp")
    with pytest.raises(ValueError, match="interval"):
        build("example.com/x", "x.sock", lambda: [], plugin_dir="/tmp", interval=0)


def test_publish_refuses_a_bad_list_and_keeps_the_old_one() -> None:
    plugin = build("example.com/x", "x.sock", lambda: [], plugin_dir="/tmp")
    plugin.publish(["a", "b"])
    with pytest.raises(DeviceListError):
        plugin.publish(["a", "a"])
    assert [d.id for d in plugin.devices] == ["a", "b"]


def test_plugin_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDPLITE_PLUGIN_DIR", "/run/dp")
    plugin = build("example.com/x", "x.sock", lambda: [])
    assert plugin.socket_path == "/run/dp/x.sock" and plugin.kubelet_socket == "/run/dp/kubelet.sock"
    monkeypatch.delenv("SDPLITE_PLUGIN_DIR")
    assert build("example.com/x", "x.sock", lambda: []).plugin_dir == "/var/lib/kubelet/device-plugins"


def test_concurrent_health_changes_all_land() -> None:
    """Health changes from many threads at once: none is lost."""
    import threading

    plugin = build("example.com/x", "x.sock", lambda: [], plugin_dir="/tmp")
    ids = [f"d{i}" for i in range(32)]
    plugin.publish(ids)
    threads = [threading.Thread(target=plugin.set_health, args=(i, False)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [d.healthy for d in plugin.devices] == [False] * 32


def test_devices_are_frozen_dataclasses() -> None:
    node = DeviceNode("/dev/sdb")
    device = Device("disk-0", numa_nodes=[0], nodes=[node], mounts=[Mount("/x")], envs={"B": "2", "A": "1"})
    assert dataclasses.is_dataclass(device)
    assert [f.name for f in dataclasses.fields(Device)][:3] == ["id", "healthy", "numa_nodes"]
    assert device.numa_nodes == (0,) and device.nodes == (node,) and list(device.envs) == ["A", "B"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.healthy = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del node.permissions  # type: ignore[misc]
    copy = dataclasses.replace(device, healthy=False)
    assert copy == device.with_health(False) and copy != device
    assert hash(copy) == hash(device.with_health(False))
    assert dataclasses.asdict(Device("a"))["envs"] == {} and Device("a").envs is not Device("b").envs
    assert repr(node) == "DeviceNode(host_path='/dev/sdb', container_path=None, permissions='rw')"
    assert repr(Allocation()) == "Allocation(envs={}, mounts=(), nodes=(), annotations={}, cdi_devices=())"
    assert {Mount("/x"), Mount("/x"), Mount("/x", read_only=False)} == {Mount("/x"), Mount("/x", None, False)}
    assert (Mount("/x") == DeviceNode("/x")) is False
