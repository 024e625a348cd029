"""sdplite.discovery: groups of globs, optional paths, mountPath directories, USB by sysfs.

No hardware: every lookup goes through a root directory the tests fill with
real files and real (relative, as in sysfs) symlinks.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import pytest

from sdplite import build
from sdplite.discovery import Group, GroupDevices, PathSpec, UsbSpec, discover, glob_paths, usb_devices
from sdplite.testing import KubeletEmulator

PCI = "sys/devices/pci0000:00/0000:00:14.0"


def touch(root: str, path: str) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    open(full, "w").close()


def gdp_id(share: int, *host_paths: str) -> str:
    """generic-device-plugin's device ID: SHA-1 of the share number, then each host path."""
    return hashlib.sha1((str(share) + "".join(host_paths)).encode()).hexdigest()


def add_usb(
    root: str, name: str, vendor: str, product: str, bus: int, dev: int, serial: Optional[str] = None
) -> None:
    """A device directory under /sys/devices and its /sys/bus/usb/devices symlink."""
    hub = f"usb{bus}"
    directory = os.path.join(root, PCI, hub if name == hub else f"{hub}/{name}")
    os.makedirs(directory, exist_ok=True)
    files = {"idVendor": vendor, "idProduct": product, "busnum": str(bus), "devnum": str(dev)}
    if serial is not None:
        files["serial"] = serial
    for key, value in files.items():
        with open(os.path.join(directory, key), "w") as handle:
            handle.write(value + "\n")
    link_dir = os.path.join(root, "sys/bus/usb/devices")
    os.makedirs(link_dir, exist_ok=True)
    os.symlink(os.path.relpath(directory, link_dir), os.path.join(link_dir, name))
    touch(root, f"/dev/bus/usb/{bus:03d}/{dev:03d}")


@pytest.fixture
def usb_root(tmp_path: object) -> str:
    root = str(tmp_path)
    add_usb(root, "usb1", "1d6b", "0002", 1, 1)  # the root hub
    add_usb(root, "1-1", "1a86", "7523", 1, 5)  # a CH340 serial adapter, no serial number
    add_usb(root, "1-2", "1209", "000F", 1, 12, serial="00000001")
    add_usb(root, "usb2", "1d6b", "0003", 2, 1)
    add_usb(root, "2-1", "1209", "000f", 2, 3, serial="00000002")
    # An interface: a directory without idVendor, which is not a device.
    interface = os.path.join(root, PCI, "usb1/1-1/1-1:1.0")
    os.makedirs(interface)
    with open(os.path.join(interface, "bInterfaceClass"), "w") as handle:
        handle.write("ff\n")
    os.symlink(
        os.path.relpath(interface, os.path.join(root, "sys/bus/usb/devices")),
        os.path.join(root, "sys/bus/usb/devices/1-1:1.0"),
    )
    return root


def test_usb_devices_come_from_sysfs_with_their_bus_nodes(usb_root: str) -> None:
    found = usb_devices(usb_root)
    assert [(hex(d.vendor), hex(d.product), d.serial, d.node) for d in found] == [
        ("0x1d6b", "0x2", "", "/dev/bus/usb/001/001"),
        ("0x1a86", "0x7523", "", "/dev/bus/usb/001/005"),
        ("0x1209", "0xf", "00000001", "/dev/bus/usb/001/012"),
        ("0x1d6b", "0x3", "", "/dev/bus/usb/002/001"),
        ("0x1209", "0xf", "00000002", "/dev/bus/usb/002/003"),
    ]
    assert usb_devices(os.path.join(usb_root, "nowhere")) == []


def test_usb_group_matches_vendor_product_and_serial(usb_root: str) -> None:
    (ch340,) = discover([Group(usb=[UsbSpec(0x1A86, 0x7523)])], usb_root)
    assert ch340.id == gdp_id(0, "/dev/bus/usb/001/005")
    assert [(n.host_path, n.container_path, n.permissions) for n in ch340.nodes] == [
        ("/dev/bus/usb/001/005", "/dev/bus/usb/001/005", "rw")
    ]
    (second,) = discover([Group(usb=[UsbSpec(0x1209, 0x000F, "00000002")])], usb_root)
    assert [n.host_path for n in second.nodes] == ["/dev/bus/usb/002/003"]
    assert discover([Group(usb=[UsbSpec(0x1209, 0x000F, "nope")])], usb_root) == []
    # Without a serial both match, and (as generic-device-plugin does) one group is one device.
    shared = discover([Group(usb=[UsbSpec(0x1209, 0x000F)], count=2)], usb_root)
    both = ("/dev/bus/usb/001/012", "/dev/bus/usb/002/003")
    assert [d.id for d in shared] == [gdp_id(0, *both), gdp_id(1, *both)]
    assert all(tuple(n.host_path for n in d.nodes) == both for d in shared)


@pytest.fixture
def snd_root(tmp_path: object) -> str:
    root = str(tmp_path)
    for name in ("pcmC0D0c", "controlC0", "pcmC1D0c", "controlC1"):
        touch(root, f"/dev/snd/{name}")
    return root


def test_a_group_pairs_the_matches_of_its_paths_row_by_row(snd_root: str) -> None:
    group = Group(
        paths=[PathSpec("/dev/snd/pcmC[0-9]D0c"), PathSpec("/dev/snd/controlC*", mount_path="/snd/")]
    )
    devices = discover([group], snd_root)
    assert [d.id for d in devices] == [
        gdp_id(0, "/dev/snd/pcmC0D0c", "/dev/snd/controlC0"),
        gdp_id(0, "/dev/snd/pcmC1D0c", "/dev/snd/controlC1"),
    ]
    assert [(n.host_path, n.container_path, n.permissions) for n in devices[1].nodes] == [
        ("/dev/snd/pcmC1D0c", "/dev/snd/pcmC1D0c", "mrw"),
        ("/dev/snd/controlC1", "/snd/controlC1", "mrw"),  # a mountPath ending in / is a directory
    ]
    assert all(d.healthy for d in devices)


def test_count_limit_and_mounts(snd_root: str) -> None:
    touch(snd_root, "/etc/asound.conf")
    conf = PathSpec("/etc/asound.conf", mount_path="/etc/asound.conf", type="Mount", read_only=True)
    pcm = PathSpec("/dev/snd/pcmC*D0c")
    # The conf file matches once: without a limit the group has one row, with limit 2 it has two.
    assert len(discover([Group(paths=[pcm, conf])], snd_root)) == 1
    shared = PathSpec(conf.path, conf.mount_path, "Mount", read_only=True, limit=2)
    devices = discover([Group(paths=[pcm, shared], count=3)], snd_root)
    assert len(devices) == 6 and len({d.id for d in devices}) == 6
    assert devices[0].id == gdp_id(0, "/dev/snd/pcmC0D0c", "/etc/asound.conf")
    assert devices[5].id == gdp_id(2, "/dev/snd/pcmC1D0c", "/etc/asound.conf")
    assert [(m.host_path, m.container_path, m.read_only) for m in devices[0].mounts] == [
        ("/etc/asound.conf", "/etc/asound.conf", True)
    ]


def test_a_missing_optional_path_is_left_out_a_missing_required_one_leaves_nothing(snd_root: str) -> None:
    tty = PathSpec("/dev/ttyS0", optional=True)
    (device,) = discover([Group(paths=[PathSpec("/dev/snd/controlC0"), tty])], snd_root)
    assert [n.host_path for n in device.nodes] == ["/dev/snd/controlC0"]
    assert device.id == gdp_id(0, "/dev/snd/controlC0")
    assert discover([Group(paths=[PathSpec("/dev/snd/controlC0"), PathSpec("/dev/ttyS0")])], snd_root) == []
    touch(snd_root, "/dev/ttyS0")
    (device,) = discover([Group(paths=[PathSpec("/dev/snd/controlC0"), tty])], snd_root)
    assert [n.host_path for n in device.nodes] == ["/dev/snd/controlC0", "/dev/ttyS0"]


def test_globs_follow_go_rules_dot_files_symlinks_classes_and_escapes(tmp_path: object) -> None:
    root = str(tmp_path)
    for name in ("ttyUSB0", "ttyUSB1", ".hidden", "a*b", "ttyACM0"):
        touch(root, f"/dev/{name}")
    os.makedirs(os.path.join(root, "dev/serial/by-id"))
    os.symlink("../../ttyUSB1", os.path.join(root, "dev/serial/by-id/usb-FTDI_A50285BI-if00"))
    os.symlink("../../gone", os.path.join(root, "dev/serial/by-id/usb-dangling"))
    assert glob_paths("/dev/ttyUSB*", root) == ["/dev/ttyUSB0", "/dev/ttyUSB1"]
    assert glob_paths("/dev/*", root)[0] == "/dev/.hidden"
    assert glob_paths("/dev/tty[^U]*", root) == ["/dev/ttyACM0"]
    assert glob_paths("/dev/a\\*b", root) == ["/dev/a*b"]
    assert glob_paths("/dev/serial/by-id/*", root) == ["/dev/serial/by-id/usb-FTDI_A50285BI-if00"]
    assert glob_paths("/dev/*/by-id/usb-*", root) == ["/dev/serial/by-id/usb-FTDI_A50285BI-if00"]
    assert glob_paths("/nowhere/*", root) == []


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: PathSpec("dev/x"), "absolute"),
        (lambda: PathSpec("/dev/[x"), "without its closing"),
        (lambda: PathSpec("/dev/x", type="Socket"), '"Device" or "Mount"'),
        (lambda: Group(), "either paths or usb"),
        (lambda: Group(paths=[PathSpec("/x")], usb=[UsbSpec(1, 2)]), "either paths or usb"),
        (lambda: Group(paths=[PathSpec("/x")], count=0), "count must be at least 1"),
    ],
)
def test_bad_specs_say_what_to_fix(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        make()  # type: ignore[operator]


def test_group_devices_serve_through_build(usb_root: str, sock_dir: str) -> None:
    """The helpers are a get_devices for build(); assigning groups changes the next scan."""
    for name in ("pcmC0D0c", "controlC0"):
        touch(usb_root, f"/dev/snd/{name}")
    source = GroupDevices(
        [
            Group(paths=[PathSpec("/dev/snd/pcmC0D0c"), PathSpec("/dev/snd/controlC0")]),
            Group(usb=[UsbSpec(0x1A86, 0x7523)], count=2),
        ],
        root=usb_root,
    )
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        plugin = build("example.com/av", "av.sock", source, plugin_dir=kubelet.directory, interval=0.2)
        with plugin:
            found = kubelet.wait_for_devices("example.com/av", count=3, healthy=3, timeout=20)
            capture = gdp_id(0, "/dev/snd/pcmC0D0c", "/dev/snd/controlC0")
            assert capture in found.healthy
            response = kubelet.allocate("example.com/av", [capture]).container_responses[0]
            assert [d.host_path for d in response.devices] == ["/dev/snd/pcmC0D0c", "/dev/snd/controlC0"]
            source.groups = source.groups[1:]
            kubelet.wait_for_devices("example.com/av", count=2, timeout=20)


def test_edge_cases_as_generic_device_plugin_has_them(tmp_path: object) -> None:
    root = str(tmp_path)
    for name in ("ttyUSB0", "ttyUSB1", "input/event0", "input/event1", "does/exist"):
        touch(root, f"/dev/{name}")
    # A fixed mountPath for a glob: every device is seen at that one path.
    fixed = discover([Group(paths=[PathSpec("/dev/ttyUSB*", mount_path="/dev/ttyUSB0")])], root)
    assert [(d.nodes[0].host_path, d.nodes[0].container_path) for d in fixed] == [
        ("/dev/ttyUSB0", "/dev/ttyUSB0"),
        ("/dev/ttyUSB1", "/dev/ttyUSB0"),
    ]
    # One required path of a group is missing: the group has no device.
    assert discover([Group(paths=[PathSpec("/dev/does/not/exist"), PathSpec("/dev/does/exist")])], root) == []
    # Every path optional and missing: no device either.
    assert discover([Group(paths=[PathSpec("/dev/ttyS0", optional=True)])], root) == []
    # A directory as a Mount is one device, the directory itself.
    (inputs,) = discover([Group(paths=[PathSpec("/dev/input", type="Mount")])], root)
    assert [(m.host_path, m.container_path, m.read_only) for m in inputs.mounts] == [
        ("/dev/input", "/dev/input", False)
    ]


def test_a_named_source_that_finds_nothing_warns_once(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    root = str(tmp_path)
    source = GroupDevices(
        [Group(paths=[PathSpec("/dev/ttyUSB*")]), Group(usb=[UsbSpec(0x1A86, 0x7523)])], root, "x/y"
    )
    with caplog.at_level("WARNING", logger="sdplite"):
        assert source() == [] and source() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "x/y: nothing matches" in warnings[0]
    assert "/dev/ttyUSB*" in warnings[0] and "USB 1a86:7523" in warnings[0]
    touch(root, "/dev/ttyUSB0")
    assert len(source()) == 1
    os.unlink(os.path.join(root, "dev/ttyUSB0"))
    with caplog.at_level("WARNING", logger="sdplite"):
        source()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2  # again, after a good scan
