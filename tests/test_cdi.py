"""CDI spec files (sdplite/cdi.py), judged by the CDI library container runtimes use.

The spec files are loaded by Debian's container-device-interface package
(tests/interop/cdi, built in GOPATH mode): it must report no errors, know
every device, keep the cdiVersion we chose, and turn each CDI name into the
device nodes, cgroup rules, mounts and env vars the device data describes.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from typing import Any

import pytest
from interop.cdi_check import load, oci_edits

from sdplite import Device, DeviceNode, Mount
from sdplite.cdi import (
    CdiError,
    SpecFile,
    build_spec,
    check_device_name,
    kind_for,
    qualified_name,
    remove_spec,
    required_version,
    write_spec,
)

from conftest import wait_until


def char_device(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode)
    return ("c", os.major(st.st_rdev), os.minor(st.st_rdev))


def expected_edits(device: Device) -> dict[str, Any]:
    """What a runtime must add for ``device``, from its data alone."""
    nodes = []
    cgroup = []
    for node in device.nodes:
        kind, major, minor = char_device(node.host_path)
        nodes.append((node.container_path or node.host_path, kind, major, minor))
        cgroup.append((kind, major, minor, node.permissions))
    mounts = [
        (m.container_path or m.host_path, m.host_path, ("rbind", "ro" if m.read_only else "rw"))
        for m in device.mounts
    ]
    return {
        "env": sorted(f"{k}={v}" for k, v in device.envs.items()),
        "devices": sorted(nodes),
        "cgroup": sorted(cgroup),
        "mounts": sorted(mounts),
    }


@pytest.fixture
def cdi_dir(tmp_path: Any) -> str:
    return str(tmp_path / "cdi")


def disks(tmp_path: Any) -> list[Device]:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    return [
        Device(
            "disk-0",
            nodes=[DeviceNode("/dev/null"), DeviceNode("/dev/zero", permissions="r")],
            mounts=[Mount(str(share), "/opt/disk")],
            envs={"DISK": "0", "DISK_MODE": "fast"},
        ),
        Device("disk-1", nodes=[DeviceNode("/dev/full", permissions="rwm")], envs={"DISK": "1"}),
        Device("disk-2"),  # nothing for a runtime to do: CDI refuses such an entry
    ]


def test_the_cdi_library_loads_our_spec_and_resolves_every_name(cdi_dir: str, tmp_path: Any) -> None:
    devices = disks(tmp_path)
    spec = build_spec("example.com/disk", devices)
    assert spec["cdiVersion"] == "0.3.0", "nothing here needs more than the earliest version"
    assert [d["name"] for d in spec["devices"]] == ["disk-0", "disk-1"], "disk-2 has no entry"
    path = write_spec(spec, cdi_dir)
    assert os.path.basename(path) == "example.com-disk.json"
    names = [qualified_name("example.com/disk", d.id) for d in devices[:2]]
    report = load(cdi_dir, [*names, "example.com/disk=disk-2"])
    assert report["errors"] == {} and report["dir_errors"] == {}
    assert sorted(report["devices"]) == sorted(names)
    assert report["versions"] == {path: "0.3.0"}
    assert "unresolvable" in report["injected"]["example.com/disk=disk-2"]["error"]
    for device, name in zip(devices, names):
        injected = report["injected"][name]
        assert "error" not in injected, injected
        assert oci_edits(injected["spec"]) == expected_edits(device), name


def test_renamed_nodes_and_digit_names_need_cdi_0_5_and_the_library_agrees(
    cdi_dir: str, tmp_path: Any
) -> None:
    devices = [
        Device("0", nodes=[DeviceNode("/dev/null", "/dev/disk0")], envs={"DISK": "0"}),
        Device("gpu-0::1", nodes=[DeviceNode("/dev/zero")], mounts=[Mount(str(tmp_path), "/data", False)]),
    ]
    spec = build_spec("example.com/disk", devices)
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/disk0", "hostPath": "/dev/null", "permissions": "rw"}
    ]
    path = write_spec(spec, cdi_dir)
    names = [f"example.com/disk={d.id}" for d in devices]
    report = load(cdi_dir, names)
    assert report["errors"] == {} and report["versions"] == {path: "0.5.0"}
    for device, name in zip(devices, names):
        assert oci_edits(report["injected"][name]["spec"]) == expected_edits(device)


def test_the_library_refuses_a_version_too_old_for_the_content(cdi_dir: str) -> None:
    # The negative control: the library does check what we write.
    spec = build_spec("example.com/disk", [Device("disk-0", envs={"DISK": "0"})])
    spec["cdiVersion"] = "9.9.9"
    write_spec(spec, cdi_dir)
    report = load(cdi_dir, ["example.com/disk=disk-0"])
    assert report["errors"] and "error" in report["injected"]["example.com/disk=disk-0"]


def test_required_version_follows_the_features_used() -> None:
    base: dict[str, Any] = {"kind": "example.com/disk", "devices": [{"name": "d", "containerEdits": {}}]}
    assert required_version(base) == "0.3.0"
    typed_mount = {"mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]}
    assert required_version({**base, "containerEdits": typed_mount}) == "0.4.0"
    assert required_version({**base, "devices": [{"name": "0d", "containerEdits": {}}]}) == "0.5.0"
    host_path = {"deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/y"}]}
    assert required_version({**base, "devices": [{"name": "d", "containerEdits": host_path}]}) == "0.5.0"
    assert required_version({**base, "kind": "example.com/gpu.shared"}) == "0.6.0"
    assert build_spec("example.com/gpu.shared", [Device("g", envs={"G": "1"})])["cdiVersion"] == "0.6.0"


def test_names_cdi_refuses_get_a_clear_error() -> None:
    assert kind_for("example.com/gpu") == "example.com/gpu"
    for bad in ("gpu", "example.com/", "/gpu", "1example.com/gpu", "example.com/gpu-"):
        with pytest.raises(CdiError, match="cannot be a CDI kind"):
            kind_for(bad)
    assert check_device_name("gpu-0::2") == "gpu-0::2"
    for bad in ("", "a/b", "-a", "a-", "a b"):
        with pytest.raises(CdiError, match="cannot be a CDI device name"):
            check_device_name(bad)
    with pytest.raises(CdiError, match="'disk/0'"):
        build_spec("example.com/disk", [Device("disk/0", envs={"D": "0"})])
    with pytest.raises(CdiError, match="plain file name"):
        write_spec(build_spec("example.com/disk", []), "/tmp", name="../x.json")


def test_spec_file_writes_on_change_only_and_removes(cdi_dir: str) -> None:
    spec_file = SpecFile("example.com/disk", cdi_dir)
    assert spec_file.path == os.path.join(cdi_dir, "example.com-disk.json")
    disk0 = Device("disk-0", nodes=[DeviceNode("/dev/null")])
    disk1 = Device("disk-1", envs={"DISK": "1"})
    assert spec_file.update([disk0]) is True  # creates the directory too
    assert stat.S_IMODE(os.stat(spec_file.path).st_mode) == 0o644, "runtimes read it"
    assert spec_file.update([disk0]) is False
    assert spec_file.update([disk0.with_health(False)]) is False, "health is not in the spec"
    assert spec_file.update([disk0, disk1, Device("plain")]) is True
    assert [d["name"] for d in json.load(open(spec_file.path))["devices"]] == ["disk-0", "disk-1"]
    os.unlink(spec_file.path)  # someone removed it: the next update writes it again
    assert spec_file.update([disk0, disk1, Device("plain")]) is True
    assert os.listdir(cdi_dir) == ["example.com-disk.json"], "no temporary file is left"
    names = spec_file.names(["disk-1", "plain", "disk-0"])
    assert names == ["example.com/disk=disk-1", "example.com/disk=disk-0"], "plain has no entry"
    with pytest.raises(CdiError):
        spec_file.update([Device("bad/id", envs={"X": "1"})])
    assert spec_file.names(["disk-1"]) == ["example.com/disk=disk-1"], "a refused list changes nothing"
    assert spec_file.remove() is True and not os.path.exists(spec_file.path)
    assert spec_file.remove() is False and remove_spec(spec_file.path) is False
    # Another process wrote the file since (a rolling update's new pod): our stop leaves it.
    spec_file.update([disk0])
    SpecFile("example.com/disk", cdi_dir).update([disk0, disk1])
    assert spec_file.remove() is False and "disk-1" in open(spec_file.path).read()


def test_a_reader_never_sees_a_partial_spec(cdi_dir: str) -> None:
    spec_file = SpecFile("example.com/disk", cdi_dir)
    spec_file.update([Device("disk-0", envs={"N": "0"})])
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            with open(spec_file.path, encoding="utf-8") as handle:
                text = handle.read()
            try:
                seen.append(len(json.loads(text)["devices"]))
            except ValueError:
                bad.append(text)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(200):
            spec_file.update([Device(f"disk-{i}", envs={"N": "x" * 500}) for i in range(1 + round_ % 50)])
    finally:
        stop.set()
        reader.join()
    assert not bad, f"a reader saw a half-written spec: {bad[0][:80]!r}"
    assert seen


# -- a plugin with cdi=True ------------------------------------------------------------


class Disks:
    """Sends whatever list it is given, when it is given one."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices

    def list_and_watch(self, watch: Any) -> None:
        watch.send(self.devices)
        watch.wait()


def test_a_plugin_keeps_its_spec_current_and_allocate_names_resolve(
    sock_dir: str, cdi_dir: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from sdplite import DeviceListError, build
    from sdplite.testing import KubeletEmulator

    devices = disks(tmp_path)
    with KubeletEmulator(sock_dir) as kubelet:
        plugin = build(
            "example.com/disk",
            "disk.sock",
            Disks(devices),
            plugin_dir=sock_dir,
            cdi=True,
            cdi_dir=cdi_dir,
            replicas=2,
        )
        spec_path = os.path.join(cdi_dir, "example.com-disk.json")
        with plugin:
            kubelet.wait_for_devices("example.com/disk", count=6)
            assert [d["name"] for d in json.load(open(spec_path))["devices"]] == ["disk-0", "disk-1"]
            answer = kubelet.allocate(
                "example.com/disk", ["disk-1::0", "disk-0::1", "disk-0::0", "disk-2::1"]
            )
            names = [c.name for c in answer.container_responses[0].cdi_devices]
            assert names == ["example.com/disk=disk-1", "example.com/disk=disk-0"], "physical, once, in order"
            report = load(cdi_dir, names)
            assert report["errors"] == {}
            merged = expected_edits(Device("x", nodes=[*devices[1].nodes, *devices[0].nodes]))
            both = oci_edits(report["injected"]["example.com/disk=disk-1"]["spec"])
            assert both["devices"] == expected_edits(devices[1])["devices"]
            assert merged["devices"] == sorted(
                both["devices"] + oci_edits(report["injected"]["example.com/disk=disk-0"]["spec"])["devices"]
            )
            # The list changes: the spec follows before the kubelet sees the new device.
            plugin.publish([*devices, Device("disk-3", nodes=[DeviceNode("/dev/null", "/dev/disk3")])])
            kubelet.wait_for_devices("example.com/disk", count=8)
            report = load(cdi_dir, ["example.com/disk=disk-3"])
            assert report["versions"] == {spec_path: "0.5.0"}, "a renamed node needs hostPath"
            assert (
                oci_edits(report["injected"]["example.com/disk=disk-3"]["spec"])["devices"][0][0]
                == "/dev/disk3"
            )
            # An ID CDI cannot name: the list is refused, the old one and its spec stay.
            with pytest.raises(
                DeviceListError, match="CDI is on: device ID 'disk/4' cannot be a CDI device name"
            ):
                plugin.publish([Device("disk/4", envs={"D": "4"})])
            assert len(kubelet.resource("example.com/disk").devices) == 8
            assert "disk-3" in open(spec_path).read()
        assert not os.path.exists(spec_path), "a clean stop removes the spec"
        with plugin:  # started again: the spec is back
            kubelet.wait_for_registration("example.com/disk", count=2)
            wait_until(lambda: os.path.exists(spec_path), what="the spec written again")
        assert not os.path.exists(spec_path)


def test_cdi_needs_a_resource_name_cdi_can_use(sock_dir: str) -> None:
    from sdplite import build

    # Kubernetes takes a domain that starts with a digit; CDI wants a letter.
    with pytest.raises(ValueError, match="cdi=True: resource name '9disks.com/disk' cannot be a CDI kind"):
        build("9disks.com/disk", "d.sock", lambda: [], plugin_dir=sock_dir, cdi=True)


def test_a_spec_that_cannot_be_written_is_logged_and_the_devices_still_served(
    sock_dir: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from sdplite import build
    from sdplite.testing import KubeletEmulator

    caplog.set_level(logging.ERROR, logger="sdplite")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the CDI "directory" is a file: every write fails
    with KubeletEmulator(sock_dir) as kubelet:
        plugin = build(
            "example.com/disk",
            "disk.sock",
            lambda: [Device("disk-0", envs={"DISK": "0"})],
            plugin_dir=sock_dir,
            cdi=True,
            cdi_dir=str(blocked),
            metrics_port=0,
            metrics_host="127.0.0.1",
        )
        with plugin:
            kubelet.wait_for_devices("example.com/disk", count=1)
            wait_until(lambda: "cannot write CDI spec" in caplog.text, what="the error logged")
            stats = plugin.state.stats
            assert stats is not None and stats.counters()[("errors", (("kind", "cdi_write"),))] >= 1
