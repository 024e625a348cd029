"""The sdplite command, run as a subprocess for each of its subcommands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Optional

import pytest
from grpcio_plugin import GrpcioDevicePlugin

from sdplite import Device, DeviceNode, build
from sdplite.testing import KubeletEmulator

from conftest import wait_until

SDPLITE = [sys.executable, "-m", "sdplite"]


class Lines:
    """Collects a subprocess's output lines as they come, to wait on them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, count: int = 1) -> None:
        wait_until(
            lambda: sum(text in line for line in self.lines) >= count,
            timeout=20,
            what=f"{count}x {text!r} in output: {self.lines[-10:]}",
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # fail, but leave no process behind for the next tests
            self.proc.wait()
            raise
        self._thread.join(5)
        return code


def start(*args: str, env: Optional[dict[str, str]] = None, sigint_ignored: bool = False) -> Lines:
    """Run ``sdplite ARGS``; ``sigint_ignored`` starts it as a non-interactive shell's
    background job (``cmd &`` in a script) does: with SIGINT ignored."""
    prefix = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"] if sigint_ignored else []
    proc = subprocess.Popen(
        [*prefix, *SDPLITE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return Lines(proc)


@pytest.mark.parametrize("command", [[], ["demo"], ["kubelet"], ["serve"], ["inspect"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run([*SDPLITE, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "usage: sdplite" in result.stdout


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "sdplite")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("sdplite ")


def test_demo_tells_the_whole_story_and_exits_0() -> None:
    result = subprocess.run([*SDPLITE, "demo"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "registered example.com/gpu",
        "gpu-3    Healthy",
        "gpu-1 goes Unhealthy",
        "3 healthy, 1 unhealthy",
        "the container gets",
        "device  /dev/null -> /dev/demo-gpu",
        "registered again",
        "done.",
    ):
        assert step in out, (step, out)


def test_kubelet_command_prints_registrations_updates_and_restarts(sock_dir: str) -> None:
    kubelet = start("kubelet", "--dir", sock_dir)
    try:
        kubelet.wait_for("listening")
        plugin = build("example.com/x", "x.sock", lambda: ["a", "b"], plugin_dir=sock_dir).start()
        try:
            kubelet.wait_for("registered   example.com/x endpoint=x.sock")
            kubelet.wait_for("example.com/x: 2 devices, 2 healthy")
            plugin.set_health("b", False)
            kubelet.wait_for("2 devices, 1 healthy unhealthy: b")
            kubelet.proc.send_signal(signal.SIGHUP)
            kubelet.wait_for("registered   example.com/x", count=2)
        finally:
            plugin.stop()
    finally:
        assert kubelet.stop() == 0
    assert not os.path.exists(os.path.join(sock_dir, "kubelet.sock"))


def test_kubelet_command_registers_dra_drivers_and_prints_their_health(sock_dir: str) -> None:
    from sdplite import dra

    registry = os.path.join(sock_dir, "reg")
    kubelet = start("kubelet", "--dir", os.path.join(sock_dir, "dp"), "--dra-registry", registry)
    try:
        kubelet.wait_for("for DRA drivers")
        devices = [Device("gpu-0"), Device("gpu-1")]
        options = dict(
            node_name="n", kube=None, registry_dir=registry, plugin_dir=os.path.join(sock_dir, "p")
        )
        with dra.build("gpu.example.com", devices=devices, pod_uid="", **options) as driver:
            kubelet.wait_for("registered   gpu.example.com")
            kubelet.wait_for("health       gpu.example.com: gpu-0=HEALTHY, gpu-1=HEALTHY")
            driver.set_health("gpu-1", False, "too hot")
            kubelet.wait_for("gpu-1=UNHEALTHY (too hot)")
            kubelet.proc.send_signal(signal.SIGHUP)
            kubelet.wait_for("registered   gpu.example.com", count=2)
    finally:
        assert kubelet.stop() == 0


@pytest.fixture
def emulator(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        yield kubelet


def test_serve_follows_device_files_that_come_and_go(sock_dir: str, emulator: KubeletEmulator) -> None:
    devdir = os.path.join(sock_dir, "dev")
    os.mkdir(devdir)
    for name in ("ttyUSB0", "ttyUSB1"):
        open(os.path.join(devdir, name), "w").close()
    resource = "example.com/serial"
    serve = start(
        "serve",
        "--resource",
        f"{resource}={devdir}/ttyUSB*",
        "--plugin-dir",
        emulator.directory,
        "--interval",
        "0.1",
    )
    try:
        emulator.wait_for_devices(resource, count=2, healthy=2, timeout=20)
        open(os.path.join(devdir, "ttyUSB2"), "w").close()
        emulator.wait_for_devices(resource, count=3, healthy=3)
        os.unlink(os.path.join(devdir, "ttyUSB0"))
        found = emulator.wait_for_devices(resource, count=3, healthy=2)
        sick = found.unhealthy
        assert len(sick) == 1 and sick[0].endswith("ttyUSB0")
        spec = emulator.allocate(resource, [found.healthy[0]]).container_responses[0].devices[0]
        assert spec.host_path == spec.container_path == os.path.join(devdir, "ttyUSB1")
        assert spec.permissions == "rw"
    finally:
        assert serve.stop() == 0
    assert not [n for n in os.listdir(emulator.directory) if n.startswith("sdplite-")]


def test_serve_with_a_config_file_shares_and_mounts(sock_dir: str, emulator: KubeletEmulator) -> None:
    path = os.path.join(sock_dir, "data.bin")
    open(path, "w").close()
    config = os.path.join(sock_dir, "serve.json")
    with open(config, "w") as handle:
        json.dump(
            {
                "plugin_dir": emulator.directory,
                "interval": 0.1,
                "resources": [{"name": "example.com/data", "paths": [path], "count": 3, "mount": True}],
            },
            handle,
        )
    serve = start("serve", "--config", config)
    try:
        found = emulator.wait_for_devices("example.com/data", count=3, healthy=3, timeout=20)
        assert all(i.endswith(("-0", "-1", "-2")) for i in found.healthy)
        mount = emulator.allocate("example.com/data", [found.healthy[0]]).container_responses[0].mounts[0]
        assert (mount.host_path, mount.read_only) == (path, False)
    finally:
        assert serve.stop() == 0


def test_serve_with_cdi_writes_the_spec_and_removes_it(
    sock_dir: str, emulator: KubeletEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(sock_dir, "ttyUSB0")
    open(path, "w").close()
    cdi_dir = os.path.join(sock_dir, "cdi")
    monkeypatch.setenv("SDPLITE_CDI_DIR", cdi_dir)
    serve = start(
        "serve", "--resource", f"example.com/serial={path}", "--plugin-dir", emulator.directory, "--cdi"
    )
    try:
        found = emulator.wait_for_devices("example.com/serial", count=1, timeout=20)
        (device_id,) = found.healthy
        answer = emulator.allocate("example.com/serial", [device_id]).container_responses[0]
        assert [c.name for c in answer.cdi_devices] == [f"example.com/serial={device_id}"]
        with open(os.path.join(cdi_dir, "example.com-serial.json")) as handle:
            spec = json.load(handle)
        assert spec["devices"] == [
            {"name": device_id, "containerEdits": {"deviceNodes": [{"path": path, "permissions": "rw"}]}}
        ]
    finally:
        assert serve.stop() == 0
    assert os.listdir(cdi_dir) == [], "a clean stop removes the spec"


@pytest.mark.parametrize(
    "config,message",
    [
        ({"resources": []}, "resources must be a non-empty list"),
        ({"resources": [{"name": "bad", "paths": ["/dev/x"]}]}, "resources[0].name: resource name 'bad'"),
        (
            {"resources": [{"name": "example.com/a", "paths": ["rel/x"]}]},
            "resources[0].paths must be absolute",
        ),
        (
            {"resources": [{"name": "example.com/a", "paths": ["/x"], "count": 0}]},
            "resources[0].count must be",
        ),
        (
            {"resources": [{"name": "example.com/a", "paths": ["/x"], "colour": 1}]},
            "unknown field(s) ['colour']",
        ),
        (
            {"resources": [{"name": "example.com/a", "paths": ["/x"]}], "interval": -1},
            "interval must be a positive number",
        ),
        (
            {"resources": [{"name": "example.com/a", "paths": ["/x"]}], "metrics_port": 70000},
            "metrics_port must be a TCP port number",
        ),
        (
            {"resources": [{"name": "example.com/a", "paths": ["/x"]}], "cdi": "yes"},
            "cdi must be true or false",
        ),
        (
            {"resources": [{"name": "9com.example/a", "paths": ["/x"]}], "cdi": True},
            "cannot be a CDI kind",
        ),
    ],
)
def test_serve_refuses_bad_config_naming_the_field(sock_dir: str, config: dict, message: str) -> None:
    path = os.path.join(sock_dir, "bad.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    result = subprocess.run(
        [*SDPLITE, "serve", "--config", path, "--plugin-dir", sock_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert os.listdir(sock_dir) == ["bad.json"], "nothing may start on a bad config"


def test_serve_refuses_a_malformed_resource_flag() -> None:
    result = subprocess.run(
        [*SDPLITE, "serve", "--resource", "example.com/x"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "NAME=GLOB" in result.stderr


def test_inspect_an_sdplite_plugin(sock_dir: str) -> None:
    devices = [
        Device("d0", numa_nodes=[1], nodes=[DeviceNode("/dev/null", "/dev/d0")]),
        Device("d1", healthy=False),
    ]
    with KubeletEmulator(sock_dir):
        plugin = build("example.com/d", "d.sock", lambda: devices, plugin_dir=sock_dir).start()
        try:
            result = subprocess.run(
                [*SDPLITE, "inspect", plugin.socket_path, "--allocate", "d0"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            plugin.stop()
    assert result.returncode == 0, result.stderr
    assert "devices: 2" in result.stdout and "d1" in result.stdout and "Unhealthy" in result.stdout
    assert "device  /dev/null -> /dev/d0 (rw)" in result.stdout


def test_inspect_a_grpcio_plugin_as_json(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "g.sock")
    plugin = GrpcioDevicePlugin(path, ["g0", "g1"])
    try:
        result = subprocess.run(
            [*SDPLITE, "inspect", path, "--json", "--allocate", "g0,g1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines[0]["options"] == {"pre_start_required": True, "get_preferred_allocation_available": True}
        assert [d["ID"] for d in lines[1]["devices"]["devices"]] == ["g0", "g1"]
        assert lines[2]["allocate"]["container_responses"][0]["envs"] == {"GRPCIO_DEVICES": "g0,g1"}
    finally:
        plugin.stop()


@pytest.mark.parametrize(
    "sigint_ignored", [False, True], ids=["sigint-as-inherited", "sigint-ignored-by-parent"]
)
def test_inspect_follow_prints_updates_until_sigint(sock_dir: str, sigint_ignored: bool) -> None:
    """Ctrl-C (SIGINT) ends --follow with 130, also when the parent started it with
    SIGINT ignored, as a script's or CI job's ``cmd &`` does (Python then has no
    KeyboardInterrupt handler of its own: this hung under a backgrounded pytest)."""
    path = os.path.join(sock_dir, "g.sock")
    plugin = GrpcioDevicePlugin(path, ["g0", "g1"])
    try:
        follow = start("inspect", path, "--follow", sigint_ignored=sigint_ignored)
        try:
            follow.wait_for("devices: 2")
            plugin.set_health("g1", "Unhealthy")
            follow.wait_for("Unhealthy")
        finally:
            code = follow.stop(signal.SIGINT)
        assert code == 130, follow.lines
    finally:
        plugin.stop()


def test_inspect_reports_a_missing_socket(sock_dir: str) -> None:
    result = subprocess.run(
        [*SDPLITE, "inspect", os.path.join(sock_dir, "none.sock"), "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_demo_dra_prepares_a_claim_and_shows_what_the_container_gets() -> None:
    result = subprocess.run([*SDPLITE, "demo", "--dra"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "the kubelet took v1.DRAPlugin and v1 health",
        "gpu-1    index=1 model=DemoGPU memory=16Gi",
        "node-1/gpu-1 for request gpu",
        "cdi     k8s.gpu.example.com/claim=",
        "device  /dev/null -> /dev/demo-gpu1 (rw)",
        "env     DEMO_VISIBLE_GPUS=gpu-1",
        "gpu-1    UNHEALTHY  fan stopped",
        "the same answer, from the checkpoint",
        "NodeUnprepareResources -> ok",
        "done.",
    ):
        assert step in out, (step, out)


def test_inspect_a_dra_driver(sock_dir: str) -> None:
    """Through its registration socket: info, health; a claim prepared and unprepared."""
    from sdplite import dra
    from sdplite.testing.dra import DraTestbed

    with DraTestbed(directory=sock_dir) as bed:
        devices = [Device("gpu-0"), Device("gpu-1", healthy=False)]
        with dra.build("gpu.example.com", devices=devices, **bed.options()) as driver:
            bed.kubelet.wait_for_registration("gpu.example.com")
            namespace, uid, name = bed.claim("gpu.example.com", ["gpu-0"])
            claim = f"{namespace}/{name}/{uid}"
            result = subprocess.run(
                [*SDPLITE, "inspect", "--dra", driver.socket_path, "--prepare", claim, "--unprepare", claim],
                capture_output=True,
                text=True,
                timeout=30,
            )
            as_json = subprocess.run(
                [*SDPLITE, "inspect", "--dra", driver.service_path, "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            bad = subprocess.run(
                [*SDPLITE, "inspect", "--dra", driver.socket_path, "--prepare", "only/two"],
                capture_output=True,
                text=True,
                timeout=30,
            )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "plugin: type=DRAPlugin name=gpu.example.com" in out and driver.service_path in out
    assert "node-1/gpu-1" in out and "UNHEALTHY" in out
    assert f"claim {uid}: ok\n  node-1/gpu-0 requests=req" in out
    assert out.count(f"claim {uid}: ok") == 2
    assert as_json.returncode == 0, as_json.stderr
    (health,) = [json.loads(line)["health"] for line in as_json.stdout.splitlines()]
    assert [d["device"]["device_name"] for d in health["devices"]] == ["gpu-0", "gpu-1"]
    assert bad.returncode == 2 and "NAMESPACE/NAME/UID" in bad.stderr
