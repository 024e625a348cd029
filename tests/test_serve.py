"""``sdplite serve``: generic-device-plugin's config, reload, mounts and device IDs.

The config checks run in-process; serving runs the real command against the
kubelet emulator, with devices in a fake root (``--host-root``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_cli import SDPLITE, start
from test_discovery import add_usb, touch

from sdplite.cli.serve_config import ConfigError, GroupResource, ResourceConfig, ServeConfig, device_id
from sdplite.cli.serve_load import load_config, parse_any
from sdplite.cli.serve_reload import Resources
from sdplite.discovery import Group, PathSpec, UsbSpec
from sdplite.testing import KubeletEmulator

from conftest import wait_until


def gdp_id(share: int, *host_paths: str) -> str:
    return hashlib.sha1((str(share) + "".join(host_paths)).encode()).hexdigest()


@pytest.fixture
def emulator(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        yield kubelet


# -- the configuration ----------------------------------------------------------------


def test_generic_device_plugin_config_maps_to_groups() -> None:
    raw = {
        "devices": [
            {
                "name": "capture",
                "groups": [
                    {
                        "paths": [
                            {"path": " /dev/snd/pcmC0D0c "},
                            {"path": "/dev/snd/controlC0", "optional": True},
                        ]
                    },
                    {
                        "count": 2,
                        "paths": [
                            {"path": "/dev/snd/controlC1", "mountPath": "/dev/snd/controlC0"},
                            {"path": "/etc/asound.conf", "type": "Mount", "readOnly": True, "limit": 2},
                        ],
                    },
                ],
            },
            {"name": "ch340", "groups": [{"usb": [{"vendor": "1a86", "product": "7523", "serial": "0001"}]}]},
        ],
        "domain": "example.com",
        "log-level": "debug",
    }
    config = parse_any(raw)
    capture, ch340 = config.resources
    assert capture == GroupResource(
        "example.com/capture",
        (
            Group(paths=[PathSpec("/dev/snd/pcmC0D0c"), PathSpec("/dev/snd/controlC0", optional=True)]),
            Group(
                paths=[
                    PathSpec("/dev/snd/controlC1", "/dev/snd/controlC0"),
                    PathSpec("/etc/asound.conf", type="Mount", read_only=True, limit=2),
                ],
                count=2,
            ),
        ),
    )
    assert ch340 == GroupResource("example.com/ch340", (Group(usb=[UsbSpec(0x1A86, 0x7523, "0001")]),))
    assert config.log_level == 10
    # --domain wins over the file's; without either it is generic-device-plugin's default.
    assert parse_any(raw, domain="d.example").resources[0].name == "d.example/capture"
    del raw["domain"]
    assert parse_any(raw).resources[0].name == "squat.ai/capture"


def test_field_names_ignore_case_as_generic_device_plugin_does() -> None:
    raw = {"Devices": [{"NAME": "xx", "groups": [{"paths": [{"path": "/dev/x", "mountpath": "/y"}]}]}]}
    (resource,) = parse_any(raw).resources
    assert isinstance(resource, GroupResource) and resource.groups[0].paths[0].mount_path == "/y"


DEV = {"name": "xx", "groups": [{"paths": [{"path": "/dev/x"}]}]}


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            {"devices": [DEV], "colour": 1},
            "the configuration has an unknown field 'colour': allowed are devices,",
        ),
        (
            {"devices": [{**DEV, "colour": 1}]},
            "devices[0] has an unknown field 'colour': allowed are name, groups",
        ),
        (
            {"devices": [{"name": "xx", "groups": [{"paths": [{"path": "/x"}], "colour": 1}]}]},
            "devices[0].groups[0] has an unknown field 'colour': allowed are paths, usb, count",
        ),
        (
            {"devices": [{"name": "xx", "groups": [{"paths": [{"path": "/x", "mountpoint": "/y"}]}]}]},
            "paths[0] has an unknown field 'mountpoint': allowed are path, mountPath, type,",
        ),
        (
            {"devices": [{"name": "xx", "groups": [{"usb": [{"vendor": "1", "product": "2", "bus": 1}]}]}]},
            "devices[0].groups[0].usb[0] has an unknown field 'bus': allowed are vendor, product, serial",
        ),
        (
            {"devices": [{"name": "xx", "groups": [{"paths": [{"path": "/x"}], "usb": [{}]}]}]},
            'needs either "paths" or "usb"',
        ),
        (
            {"devices": [{"name": "xx", "groups": [{"usb": [{"vendor": 1209, "product": "2"}]}]}]},
            'YAML read a number: quote it, e.g. "1209"',
        ),
        ({"devices": [{**DEV, "count": 3}]}, '"count" belongs in each group'),
        ({"devices": [{**DEV, "name": "Bad_Name"}]}, "devices[0].name must be 2 or more lower-case letters"),
        ({"devices": [DEV, DEV]}, "'squat.ai/xx' is listed twice"),
        (
            {"devices": [{"name": "xx", "groups": [{"paths": [{"path": "/x", "type": "Socket"}]}]}]},
            '"Device" (a device node) or "Mount"',
        ),
        ({"devices": [DEV], "listen": "8080"}, 'listen must be an address such as ":8080"'),
        ({"devices": [DEV], "resources": []}, "not both in one file"),
        ({"devicez": [DEV]}, 'needs "resources" (sdplite\'s format'),
    ],
)
def test_the_imported_format_is_strict_naming_field_and_allowed_ones(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_any(raw)
    assert message in str(caught.value)


def test_yaml_files_and_the_extra_they_need(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(str(tmp_path), "config.yaml")
    with open(path, "w") as handle:
        handle.write(
            "devices:\n  - name: fuse\n    groups:\n      - count: 10\n"
            "        paths:\n          - path: /dev/fuse\n"
        )
    (fuse,) = load_config(path).resources
    assert isinstance(fuse, GroupResource) and fuse.groups[0].count == 10
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    with pytest.raises(ConfigError, match=r"pip install 'sdplite\[yaml\]'"):
        load_config(path)
    as_json = os.path.join(str(tmp_path), "config.json")
    with open(as_json, "w") as handle:
        json.dump({"devices": [DEV]}, handle)
    assert load_config(as_json).resources[0].name == "squat.ai/xx"


@given(st.lists(st.text(alphabet="ab_/:5-.", min_size=1, max_size=12), min_size=2, max_size=2, unique=True))
def test_device_ids_of_distinct_paths_differ(paths: list[str]) -> None:
    normal = ["/" + "/".join(c for c in p.split("/") if c) for p in paths]
    if normal[0] != normal[1] and "/" not in normal:
        assert device_id(normal[0]) != device_id(normal[1])
    assert all(re.fullmatch(r"[A-Za-z0-9_.:-]*", device_id(p)) for p in normal), "CDI-safe characters only"


def test_device_ids_stay_readable() -> None:
    assert device_id("/dev/ttyUSB0") == "dev_ttyUSB0"
    assert device_id("/c/a_b") != device_id("/c/a/b")


# -- serving ---------------------------------------------------------------------------


def test_serve_a_generic_device_plugin_config_group_usb_optional(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    root = str(tmp_path)
    for name in ("pcmC0D0c", "controlC0"):
        touch(root, f"/dev/snd/{name}")
    add_usb(root, "1-1", "1a86", "7523", 1, 5)
    config = os.path.join(root, "config.yaml")
    with open(config, "w") as handle:
        handle.write(
            """
devices:
  - name: capture
    groups:
      - paths:
          - path: /dev/snd/pcmC0D0c
          - path: /dev/snd/controlC0
            mountPath: /dev/snd/
          - path: /dev/snd/seq
            optional: true
  - name: ch340
    groups:
      - count: 2
        usb:
          - vendor: "1a86"
            product: "7523"
domain: example.com
"""
        )
    serve = start(
        "serve",
        "--config",
        config,
        "--plugin-dir",
        emulator.directory,
        "--interval",
        "0.2",
        "--host-root",
        root,
    )
    try:
        capture = emulator.wait_for_devices("example.com/capture", count=1, healthy=1, timeout=20)
        assert capture.healthy == [gdp_id(0, "/dev/snd/pcmC0D0c", "/dev/snd/controlC0")]
        specs = emulator.allocate("example.com/capture", capture.healthy).container_responses[0].devices
        assert [(s.host_path, s.container_path, s.permissions) for s in specs] == [
            ("/dev/snd/pcmC0D0c", "/dev/snd/pcmC0D0c", "mrw"),
            ("/dev/snd/controlC0", "/dev/snd/controlC0", "mrw"),
        ]
        usb = emulator.wait_for_devices("example.com/ch340", count=2, healthy=2, timeout=20)
        assert sorted(usb.healthy) == sorted(gdp_id(s, "/dev/bus/usb/001/005") for s in (0, 1))
        (spec,) = emulator.allocate("example.com/ch340", usb.healthy[:1]).container_responses[0].devices
        assert (spec.host_path, spec.container_path) == ("/dev/bus/usb/001/005", "/dev/bus/usb/001/005")
        touch(root, "/dev/snd/seq")  # the optional path appears: the group now holds it
        emulator.wait_for_devices(
            "example.com/capture",
            predicate=lambda r: (
                r.healthy == [gdp_id(0, "/dev/snd/pcmC0D0c", "/dev/snd/controlC0", "/dev/snd/seq")]
            ),
        )
    finally:
        assert serve.stop() == 0


def test_serve_takes_device_flags_like_generic_device_plugin(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    root = str(tmp_path)
    touch(root, "/dev/fuse")
    flag = (
        "name: fuse\ngroups:\n  - count: 3\n    paths:\n      - path: /dev/fuse\n"  # YAML, as in its manifest
    )
    serve = start(
        "serve", "--device", flag, "--domain", "example.org", "--plugin-dir", emulator.directory,
        "--host-root", root,
    )  # fmt: skip
    try:
        found = emulator.wait_for_devices("example.org/fuse", count=3, healthy=3, timeout=20)
        assert sorted(found.healthy) == sorted(gdp_id(s, "/dev/fuse") for s in range(3))
    finally:
        assert serve.stop() == 0


def test_serve_refuses_a_bad_generic_config_before_starting(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "bad.json")
    with open(path, "w") as handle:
        json.dump(
            {"devices": [{"name": "xx", "groups": [{"paths": [{"path": "/x", "mountpoint": "/y"}]}]}]}, handle
        )
    result = subprocess.run(
        [*SDPLITE, "serve", "--config", path, "--plugin-dir", sock_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown field 'mountpoint': allowed are path, mountPath" in result.stderr, result.stderr
    assert os.listdir(sock_dir) == ["bad.json"]


def configmap_write(directory: str, version: int, config: Any) -> None:
    """What the kubelet does to a mounted ConfigMap: a new directory, then a symlink swap."""
    data = f"..2026_{version:02d}"
    os.mkdir(os.path.join(directory, data))
    with open(os.path.join(directory, data, "config.json"), "w") as handle:
        json.dump(config, handle)
    os.symlink(data, os.path.join(directory, "..data_tmp"))
    os.replace(os.path.join(directory, "..data_tmp"), os.path.join(directory, "..data"))
    if not os.path.lexists(os.path.join(directory, "config.json")):
        os.symlink("..data/config.json", os.path.join(directory, "config.json"))


def device(name: str, *paths: str, count: int = 1) -> dict[str, Any]:
    return {"name": name, "groups": [{"count": count, "paths": [{"path": p} for p in paths]}]}


def test_serve_reloads_a_configmap_keeping_unchanged_resources_and_refusing_bad_ones(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    root = str(tmp_path)
    for name in ("keep", "old", "new", "gone", "added"):
        touch(root, f"/dev/{name}")
    mounted = os.path.join(root, "etc-sdplite")
    os.mkdir(mounted)
    status = os.path.join(root, "status.json")
    configmap_write(
        mounted,
        1,
        {"devices": [device("keep", "/dev/keep"), device("change", "/dev/old"), device("gone", "/dev/gone")]},
    )
    serve = start(
        "serve",
        "--config",
        os.path.join(mounted, "config.json"),
        "--plugin-dir",
        emulator.directory,
        "--interval",
        "0.2",
        "--host-root",
        root,
        env={"SDPLITE_STATUS_FILE": status},
    )

    def registrations(name: str) -> int:
        return sum(r.resource_name == name for r in emulator.registrations)

    try:
        for name in ("keep", "change", "gone"):
            emulator.wait_for_devices(f"squat.ai/{name}", count=1, timeout=20)
        keep = emulator.resource("squat.ai/keep")
        stream, change_stream = keep.stream, emulator.resource("squat.ai/change").stream
        configmap_write(
            mounted,
            2,
            {
                "devices": [
                    device("keep", "/dev/keep"),
                    device("change", "/dev/new", count=2),
                    device("added", "/dev/added"),
                ]
            },
        )
        emulator.wait_for_devices("squat.ai/added", count=1, timeout=20)
        emulator.wait_for_devices(
            "squat.ai/change",
            predicate=lambda r: sorted(r.healthy) == sorted(gdp_id(s, "/dev/new") for s in (0, 1)),
            timeout=20,
        )
        emulator.wait(lambda: not emulator.resource("squat.ai/gone").connected, 20, "squat.ai/gone dropped")
        assert emulator.resource("squat.ai/change").stream is change_stream, (
            "a changed resource keeps its stream"
        )
        assert keep.connected and keep.stream is stream and registrations("squat.ai/keep") == 1
        wait_until(  # one process, one status file with every resource of the new config
            lambda: (
                {p["resource"] for p in json.load(open(status))["plugins"]}
                == {"squat.ai/keep", "squat.ai/change", "squat.ai/added"}
            ),
            20,
            "the status file to list the new resources",
        )

        configmap_write(mounted, 3, {"devices": [device("keep", "/dev/keep")], "colour": "red"})
        serve.wait_for(
            "new configuration refused, the running one stays: "
            "the configuration has an unknown field 'colour'"
        )
        serve.proc.send_signal(signal.SIGHUP)  # re-reads the same bad file: refused again
        serve.wait_for("new configuration refused", count=2)
        for name in ("keep", "change", "added"):
            assert emulator.resource(f"squat.ai/{name}").connected, name
        assert keep.stream is stream and registrations("squat.ai/keep") == 1
        assert registrations("squat.ai/added") == 1 and registrations("squat.ai/change") == 1
    finally:
        assert serve.stop() == 0
    assert not [n for n in os.listdir(emulator.directory) if n.startswith("sdplite-")]


def test_sighup_reloads_sdplite_format_without_restarting_unchanged(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    root = str(tmp_path)
    touch(root, "/dev/a")
    touch(root, "/dev/b")
    config = os.path.join(root, "serve.json")
    with open(config, "w") as handle:
        json.dump({"resources": [{"name": "example.com/a", "paths": ["/dev/a"]}]}, handle)
    serve = start("serve", "--config", config, "--plugin-dir", emulator.directory, "--host-root", root)
    try:
        first = emulator.wait_for_devices("example.com/a", count=1, timeout=20)
        stream = first.stream
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_for("received SIGHUP: reloading")
        serve.wait_for("applying the new configuration")
        with open(config, "w") as handle:
            json.dump(
                {
                    "resources": [
                        {"name": "example.com/a", "paths": ["/dev/a"]},
                        {"name": "example.com/b", "paths": ["/dev/b"]},
                    ]
                },
                handle,
            )
        serve.proc.send_signal(signal.SIGHUP)
        emulator.wait_for_devices("example.com/b", count=1, timeout=20)
        assert emulator.resource("example.com/a").stream is stream
        assert sum(r.resource_name == "example.com/a" for r in emulator.registrations) == 1
    finally:
        assert serve.stop() == 0


def test_a_new_interval_or_a_new_kind_of_definition_replaces_the_plugin(
    tmp_path: Any, emulator: KubeletEmulator
) -> None:
    """In-process: what apply() does when a resource cannot simply be rescanned."""
    root = str(tmp_path)
    touch(root, "/dev/a")
    native = ResourceConfig("example.com/a", ("/dev/a",))
    grouped = GroupResource("example.com/a", (Group(paths=[PathSpec("/dev/a")], count=2),))
    resources = Resources(ServeConfig((native,), emulator.directory, 5.0), root)
    loop = threading.Thread(target=resources.supervisor.run)
    loop.start()

    def registrations() -> int:
        return sum(r.resource_name == "example.com/a" for r in emulator.registrations)

    try:
        emulator.wait_for_devices("example.com/a", predicate=lambda r: r.healthy == ["dev_a"], timeout=20)
        resources.apply(ServeConfig((native,), emulator.directory, 2.0))
        emulator.wait_for_registration("example.com/a", count=2, timeout=20)
        resources.apply(ServeConfig((grouped,), emulator.directory, 2.0))
        emulator.wait_for_devices(
            "example.com/a",
            predicate=lambda r: sorted(r.healthy) == sorted(gdp_id(s, "/dev/a") for s in (0, 1)),
            timeout=20,
        )
        assert registrations() == 3
    finally:
        resources.supervisor.stop()
        loop.join(30)
    assert not loop.is_alive()


def test_listen_is_the_metrics_address() -> None:
    config = parse_any({"devices": [DEV], "listen": ":9400"})
    assert (config.metrics_host, config.metrics_port) == ("", 9400)
    config = parse_any({"devices": [DEV], "listen": "127.0.0.1:8080"})
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 8080)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_and_health_follow_a_reload(tmp_path: Any, emulator: KubeletEmulator) -> None:
    """generic-device-plugin's listen, /health, /metrics: one endpoint for every resource, across reloads."""
    root = str(tmp_path)
    touch(root, "/dev/a")
    touch(root, "/dev/b")
    port = free_port()
    config = os.path.join(root, "config.json")

    def write(*devices: dict[str, Any]) -> None:
        with open(config + ".tmp", "w") as handle:
            json.dump({"devices": list(devices), "listen": f"127.0.0.1:{port}"}, handle)
        os.replace(config + ".tmp", config)

    def resources_in_metrics() -> set[str]:
        status, text = fetch(f"http://127.0.0.1:{port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)} if status == 200 else {}
        family = families.get("sdplite_registered")
        return {s.labels["resource"] for s in family.samples if s.value == 1} if family else set()

    write(device("aa", "/dev/a"))
    serve = start("serve", "--config", config, "--plugin-dir", emulator.directory, "--host-root", root)
    try:
        emulator.wait_for_devices("squat.ai/aa", count=1, timeout=20)
        wait_until(lambda: resources_in_metrics() == {"squat.ai/aa"}, 20, "aa registered in /metrics")
        assert fetch(f"http://127.0.0.1:{port}/health")[0] == 200
        write(device("aa", "/dev/a"), device("bb", "/dev/b"))
        emulator.wait_for_devices("squat.ai/bb", count=1, timeout=20)
        wait_until(lambda: resources_in_metrics() == {"squat.ai/aa", "squat.ai/bb"}, 20, "bb in /metrics too")
        write(device("bb", "/dev/b"))
        wait_until(lambda: resources_in_metrics() == {"squat.ai/bb"}, 20, "aa gone from /metrics")
        status, body = fetch(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
    finally:
        assert serve.stop() == 0
