"""Faults around a running plugin: kubelet restarts of every kind, lost sockets, bad callbacks.

The plugin must re-register every time, hold the right device list, lose
nothing and leak nothing.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sdplite import Device, PluginError, Watch, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import paths
from sdplite.testing import KubeletEmulator
from sdplite.wire import Channel

from conftest import fd_count, thread_count, wait_until
from kubelet_standin import GrpcioKubelet

RESOURCE = "example.com/disk"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def emulator(sock_dir: str) -> Iterator[KubeletEmulator]:
    with KubeletEmulator(sock_dir) as kubelet:
        yield kubelet


def stale_kubelet_socket(path: str) -> None:
    """What a killed kubelet leaves: a socket file nobody listens on."""
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()


def test_restart_soak(emulator: KubeletEmulator) -> None:
    """100 kubelet restarts with random gaps: clean stops, hard kills leaving a stale
    kubelet.sock, and kubelets slow to come back. Every one ends re-registered with
    the right devices; threads and fds end where they started."""
    devices = ["a", "b", "c"]
    plugin = build(RESOURCE, "disk.sock", lambda: list(devices), plugin_dir=emulator.directory).start()
    try:
        emulator.wait_for_devices(RESOURCE, count=3)
        threads, fds = thread_count(), fd_count()
        rng = random.Random(20261126)
        for i in range(100):
            kind = rng.choice(["clean", "killed", "slow"])
            emulator.stop()
            if kind == "killed":
                stale_kubelet_socket(emulator.socket)
            if kind != "clean":
                time.sleep(rng.uniform(0.0, 0.3))  # the fault itself: the kubelet is away for a while
            emulator.cleanup_directory()
            emulator.start()
            emulator.wait_for_registration(RESOURCE, count=i + 2, timeout=20)
            resource = emulator.wait_for_devices(RESOURCE, count=3, timeout=20)
            assert sorted(resource.healthy) == devices
        wait_until(
            lambda: thread_count() <= threads and fd_count() <= fds,
            what=f"threads {thread_count()}->{threads}, fds {fd_count()}->{fds}",
        )
    finally:
        plugin.stop()


def test_our_socket_deleted_while_streams_are_open(emulator: KubeletEmulator) -> None:
    plugin = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=emulator.directory).start()
    try:
        first = emulator.wait_for_devices(RESOURCE, count=1)
        os.unlink(plugin.socket_path)
        emulator.wait_for_registration(RESOURCE, count=2)
        second = emulator.wait_for_devices(RESOURCE, count=1)
        assert second is not first and os.path.exists(plugin.socket_path)
    finally:
        plugin.stop()


def test_plugin_dir_missing_at_start(sock_dir: str) -> None:
    directory = os.path.join(sock_dir, "later")
    plugin = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=directory).start()
    try:
        assert not plugin.registered
        with KubeletEmulator(directory) as kubelet:  # creates the directory
            kubelet.wait_for_devices(RESOURCE, count=1)
    finally:
        plugin.stop()


def test_register_errors_are_retried_with_backoff(sock_dir: str) -> None:
    kubelet = GrpcioKubelet(sock_dir)
    kubelet.refuse_with = "the device manager is busy, try again"
    plugin = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=sock_dir).start()
    try:
        kubelet.wait(lambda: len(kubelet.refusals) >= 3, what="three refused attempts")
        kubelet.refuse_with = None
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 1)
        assert plugin.error is None
    finally:
        plugin.stop()
        kubelet.stop()


def test_a_refusal_that_cannot_succeed_exits_non_zero(sock_dir: str) -> None:
    kubelet = GrpcioKubelet(sock_dir)
    kubelet.refuse_with = 'the ResourceName "example.com/superdisk" is invalid'
    try:
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "examples", "superdisk.py")],
            env={**os.environ, "SDPLITE_PLUGIN_DIR": sock_dir},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        kubelet.stop()
    assert result.returncode != 0
    assert "refused to register example.com/superdisk" in result.stderr
    assert not os.path.exists(os.path.join(sock_dir, "superdisk.sock"))


def test_a_thousand_watch_streams_opened_and_cancelled(emulator: KubeletEmulator) -> None:
    """Other watchers (tools, tests) come and go; the kubelet's stream and the plugin stay put."""
    plugin = build(
        RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=emulator.directory, worker_idle_timeout=0.2
    ).start()
    try:
        emulator.wait_for_devices(RESOURCE, count=1)
        threads, fds = thread_count(), fd_count()
        with Channel(plugin.socket_path) as channel:
            for _ in range(1000):
                stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
                assert [d.ID for d in next(stream).devices] == ["a"]
                stream.cancel()
        wait_until(lambda: plugin.state.stream_count == 1, what="only the kubelet's stream to remain")
        plugin.set_health("a", False)
        emulator.wait_for_devices(RESOURCE, healthy=0)
        assert len(emulator.registrations) == 1, "cancelled watchers must not look like a kubelet restart"
        wait_until(lambda: thread_count() <= threads and fd_count() <= fds, what="threads and fds")
    finally:
        plugin.stop()


class Fragile:
    """list_and_watch sends one good list, then a bad one, then raises."""

    def __init__(self) -> None:
        self.allocations = 0

    def list_and_watch(self, watch: Watch) -> None:
        watch.send([Device("x"), Device("y")])
        watch.send(["dup", "dup"])
        raise RuntimeError("the health checker crashed")

    def allocate(self, device_ids: list[str]) -> Any:
        self.allocations += 1
        if self.allocations == 1:
            raise OSError("device busy")
        return None


def test_callbacks_that_raise_or_send_garbage_leave_the_last_good_list(
    emulator: KubeletEmulator, caplog: Any
) -> None:
    plugin = build(RESOURCE, "f.sock", Fragile(), plugin_dir=emulator.directory).start()
    try:
        resource = emulator.wait_for_devices(RESOURCE, count=2)
        wait_until(lambda: "the health checker crashed" in caplog.text, what="the crash to be logged")
        assert "appears twice" in caplog.text
        assert sorted(resource.healthy) == ["x", "y"]
        with pytest.raises(Exception, match="OSError: device busy"):
            emulator.allocate(RESOURCE, ["x"])
        assert emulator.allocate(RESOURCE, ["x"]).container_responses  # still serving
    finally:
        plugin.stop()


def test_a_hanging_get_devices_does_not_stop_restart_handling(emulator: KubeletEmulator) -> None:
    release = threading.Event()
    calls = []

    def get_devices() -> list[str]:
        calls.append(1)
        if len(calls) > 1:
            release.wait()  # hangs until the test ends
        return ["a"]

    plugin = build(RESOURCE, "h.sock", get_devices, plugin_dir=emulator.directory, interval=0.1).start()
    try:
        emulator.wait_for_devices(RESOURCE, count=1)
        wait_until(lambda: len(calls) >= 2, what="the hanging scan to start")
        emulator.restart()
        emulator.wait_for_registration(RESOURCE, count=2)
        assert emulator.wait_for_devices(RESOURCE, count=1).healthy == ["a"]
    finally:
        release.set()
        plugin.stop()


def test_never_replace_a_symlink(sock_dir: str) -> None:
    target = os.path.join(sock_dir, "precious")
    with open(target, "w") as handle:
        handle.write("keep me")
    os.symlink(target, os.path.join(sock_dir, "disk.sock"))
    plugin = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=sock_dir).start()
    wait_until(lambda: plugin.error is not None, what="the plugin to refuse")
    assert "is a symlink" in (plugin.error or "")
    with pytest.raises(PluginError):
        plugin.stop()
    assert open(target).read() == "keep me" and os.path.islink(os.path.join(sock_dir, "disk.sock"))


def test_grpcio_kubelet_sees_unhealthy_until_re_registration(sock_dir: str) -> None:
    """Between a kubelet's stop and our re-registration nothing of ours is left behind."""
    kubelet = GrpcioKubelet(sock_dir)
    plugin = build(RESOURCE, "disk.sock", lambda: ["a"], plugin_dir=sock_dir).start()
    try:
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 1)
        kubelet.stop()
        kubelet.cleanup_directory()
        assert not os.path.exists(plugin.socket_path)
        kubelet.start()
        kubelet.wait_for_registration(RESOURCE, count=2)
        response = kubelet.allocate(RESOURCE, ["a"])
        assert response.container_responses
    except grpc.RpcError as exc:  # pragma: no cover - surfaces the status on failure
        raise AssertionError(f"{exc.code()}: {exc.details()}") from None
    finally:
        plugin.stop()
        kubelet.stop()
