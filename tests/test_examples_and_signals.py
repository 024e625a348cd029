"""The examples, run as real processes against the grpcio kubelet stand-in; signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from kubelet_standin import GrpcioKubelet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def kubelet(sock_dir: str) -> Iterator[GrpcioKubelet]:
    k = GrpcioKubelet(sock_dir)
    yield k
    k.stop()


def spawn(script: str, plugin_dir: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", script)],
        env={**os.environ, "SDPLITE_PLUGIN_DIR": plugin_dir, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    """The process's output up to the first line containing ``text`` (all of it read so far, on timeout)."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return "".join(lines)


def finish(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


def test_superdisk_example_serves_and_allocates(kubelet: GrpcioKubelet) -> None:
    proc = spawn("superdisk.py", kubelet.directory)
    try:
        kubelet.wait_for_devices("example.com/superdisk", lambda d: len(d) == 2)
        response = kubelet.allocate("example.com/superdisk", ["superdisk-1"])
        spec = response.container_responses[0].devices[0]
        assert (spec.host_path, spec.container_path) == ("/dev/null", "/dev/superdisk1")
        # The kubelet may get the list before our Register call has returned: wait for its log line.
        out = read_until(proc, "registered with the kubelet")
        assert "registered with the kubelet" in out, out
    finally:
        finish(proc)


def test_health_example_goes_unhealthy_and_healthy_again(kubelet: GrpcioKubelet, sock_dir: str) -> None:
    state = os.path.join(sock_dir, "health")
    os.mkdir(state)
    proc = spawn("health.py", kubelet.directory, HEALTH_STATE_DIR=state)
    resource = "example.com/gpu"
    try:
        kubelet.wait_for_devices(resource, lambda d: len(d) == 4 and all(x.health == "Healthy" for x in d))
        fault = os.path.join(state, "gpu-1.fault")
        open(fault, "w").close()
        kubelet.wait_for_devices(resource, lambda d: {x.ID: x.health for x in d}["gpu-1"] == "Unhealthy")
        os.unlink(fault)
        kubelet.wait_for_devices(resource, lambda d: all(x.health == "Healthy" for x in d))
        envs = kubelet.allocate(resource, ["gpu-0", "gpu-2"]).container_responses[0].envs
        assert dict(envs) == {"VISIBLE_GPUS": "gpu-0,gpu-2"}
    except BaseException:
        out = finish(proc)  # printed: pytest shows it with the failure
        print(f"health.py's output (exit status {proc.returncode}, -9 if killed here):\n{out}")
        raise
    out = finish(proc)
    assert "gpu-1 is now Unhealthy" in out and "gpu-1 is now Healthy" in out


def test_sighup_restarts_and_sigterm_stops_cleanly(kubelet: GrpcioKubelet) -> None:
    proc = spawn("superdisk.py", kubelet.directory)
    resource = "example.com/superdisk"
    try:
        first = kubelet.wait_for_registration(resource)
        proc.send_signal(signal.SIGHUP)
        second = kubelet.wait_for_registration(resource, count=2)
        kubelet.wait(lambda: first.stream_ended is not None, what="the old stream to end")
        kubelet.wait_for_devices(resource, lambda d: len(d) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        kubelet.wait(lambda: second.stream_ended is not None, what="the stream to end")
        assert second.stream_ended == "ended with OK"
        assert not os.path.exists(os.path.join(kubelet.directory, "superdisk.sock"))
    finally:
        out = finish(proc)
    assert "received SIGHUP" in out and "received SIGTERM" in out


def test_shared_gpu_example_replicas_health_checks_and_cdi(kubelet: GrpcioKubelet, sock_dir: str) -> None:
    from interop.cdi_check import load

    faults, cdi, status = (os.path.join(sock_dir, name) for name in ("faults", "cdi", "status.json"))
    os.mkdir(faults)
    env = {
        "GPU_FAULT_DIR": faults,
        "SDPLITE_CDI_DIR": cdi,
        "CHECK_INTERVAL": "0.1",
        "SDPLITE_STATUS_FILE": status,
    }
    proc = spawn("shared_gpu.py", kubelet.directory, **env)
    resource = "example.com/gpu"
    try:
        kubelet.wait_for_devices(resource, lambda d: len(d) == 8 and all(x.health == "Healthy" for x in d))
        answer = kubelet.allocate(resource, ["gpu-0::1", "gpu-0::2"]).container_responses[0]
        assert [(d.host_path, d.container_path) for d in answer.devices] == [
            ("/dev/null", "/dev/gpu-0"),
            ("/dev/full", "/dev/gpuctl"),
        ]
        assert [c.name for c in answer.cdi_devices] == ["example.com/gpu=gpu-0"]
        report = load(cdi, ["example.com/gpu=gpu-0"])
        assert report["errors"] == {} and "error" not in report["injected"]["example.com/gpu=gpu-0"]
        with open(os.path.join(faults, "gpu-1.fault"), "w") as handle:
            handle.write("Xid 79: GPU has fallen off the bus\n")
        kubelet.wait_for_devices(
            resource,
            lambda d: [x.ID for x in d if x.health != "Healthy"] == [f"gpu-1::{i}" for i in range(4)],
        )
        os.unlink(os.path.join(faults, "gpu-1.fault"))
        kubelet.wait_for_devices(resource, lambda d: all(x.health == "Healthy" for x in d))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert os.listdir(cdi) == [], "a clean stop removes the CDI spec"
    finally:
        out = finish(proc)
    assert (
        "device gpu-1 is now Unhealthy: RuntimeError: Xid 79: GPU has fallen off the bus (2 checks in a row)"
        in out
    )
    assert "device gpu-1 is now Healthy: health check passed 2 times in a row" in out


def accepts(path: str) -> bool:
    """True once a Unix socket at ``path`` accepts connections."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def test_dra_example_beside_a_device_plugin_in_one_process(sock_dir: str) -> None:
    """examples/dra_gpu.py serves a DRA driver and a device plugin through ``sdplite.run(a, b)``:
    both register sockets, publish, SIGHUP restarts both, SIGTERM removes every socket and exits 0."""
    from dra_support import api_server

    from sdplite.api import paths
    from sdplite.api import pluginregistration_pb2 as reg
    from sdplite.wire import Channel

    from conftest import wait_until

    registry = os.path.join(sock_dir, "reg")
    os.mkdir(registry)
    api = api_server()
    proc = spawn(
        "dra_gpu.py",
        sock_dir,
        SDPLITE_REGISTRY_DIR=registry,
        SDPLITE_DRA_PLUGIN_DIR=os.path.join(sock_dir, "plugins"),
        SDPLITE_KUBE_URL=api.url,
        SDPLITE_KUBE_TOKEN=api.token,
        NODE_NAME="node-1",
        POD_UID="",
        SDPLITE_ALSO_DEVICE_PLUGIN="1",
        SDPLITE_CDI_DIR=os.path.join(sock_dir, "cdi"),
    )
    sockets = {
        "DRAPlugin": os.path.join(registry, "gpu.example.com-reg.sock"),
        "DevicePlugin": os.path.join(registry, "gpu-dp.sock"),
    }
    try:
        # A socket file appears at bind(), a moment before listen(): wait until both accept.
        wait_until(lambda: all(map(accepts, sockets.values())), 30, "both registration sockets")
        for kind, path in sockets.items():
            with Channel(path) as channel:
                assert channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo).type == kind
        assert api.wait(lambda: len(api.slices) == 1)
        (published,) = api.slices.values()
        assert [d["name"] for d in published["spec"]["devices"]] == ["gpu-0", "gpu-1"]
        proc.send_signal(signal.SIGHUP)
        restarted = read_until(proc, "gpu.example.com: restarting: SIGHUP")
        assert "example.com/gpu: restarting: SIGHUP" in restarted, restarted
        wait_until(lambda: all(map(os.path.exists, sockets.values())), 30, "both sockets back")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        service = os.path.join(sock_dir, "plugins", "gpu.example.com", "dra.sock")
        assert not [p for p in (*sockets.values(), service) if os.path.exists(p)]
    finally:
        out = finish(proc)
        api.stop()
    assert "received SIGTERM" in out
