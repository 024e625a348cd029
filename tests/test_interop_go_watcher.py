"""sdplite in plugins_registry against grpc-go acting as the kubelet's plugin watcher (docs/design.md).

The peer (tests/interop/go, ``watcher`` mode) polls the registry directory
and, for each socket, does what the kubelet does: dial, GetInfo (1 s),
validate, connect to the DevicePlugin with the device manager's code,
GetDevicePluginOptions, ListAndWatch, then NotifyRegistrationStatus (5 s).
A missing Go toolchain fails these tests; it never skips them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from interop.peers import WAIT, WatcherPeer, check

from sdplite import Device, DeviceNode, build
from sdplite.api import paths
from sdplite.api import pluginregistration_pb2 as reg
from sdplite.wire import Server, ServerContext, unary

from conftest import wait_until

RESOURCE = "example.com/gpu"
GPUS = [
    Device("gpu-0", numa_nodes=[0], nodes=[DeviceNode("/dev/gpu0")], envs={"GPUS": "0"}),
    Device("gpu-1", numa_nodes=[1], envs={"GPUS": "1"}),
    Device("gpu-2", healthy=False),
]


class Gpus:
    """Our plugin: three devices; counts its server starts (``refresh`` runs on each)."""

    def __init__(self) -> None:
        self.refreshed = 0

    def list_and_watch(self, watch: Any) -> None:
        watch.send(GPUS)
        watch.wait()

    def refresh(self) -> None:
        self.refreshed += 1


def health(event: dict[str, Any]) -> dict[str, str]:
    return {device[0]: device[1] for device in event["devices"]}


@pytest.fixture
def registry(sock_dir: str) -> str:
    path = os.path.join(sock_dir, "reg")
    os.makedirs(path)
    return path


@pytest.fixture
def watcher(registry: str) -> Iterator[WatcherPeer]:
    peer = WatcherPeer("go", registry)
    yield peer
    peer.close()


@pytest.fixture
def plugin(registry: str) -> Iterator[Any]:
    plugin = build(RESOURCE, "gpu.sock", Gpus(), registration="plugins_registry", registry_dir=registry)
    plugin.start()
    yield plugin
    plugin.stop()


def test_the_watcher_connects_lists_allocates_and_notifies(watcher: WatcherPeer, plugin: Any) -> None:
    """GetInfo, options and ListAndWatch on our registry socket, then Notify(true) makes us registered."""
    registered = watcher.wait_registered(RESOURCE)
    assert registered["socket"] == plugin.socket_path
    assert (registered["endpoint"], registered["versions"]) == ("", ["v1beta1"])
    assert registered["options"] == {"pre_start_required": False, "get_preferred_allocation_available": False}
    first = watcher.wait_list(RESOURCE, lambda e: e["count"] == 3)
    assert first["devices"] == [
        ["gpu-0", "Healthy", [0]],
        ["gpu-1", "Healthy", [1]],
        ["gpu-2", "Unhealthy", []],
    ]
    notified = check(watcher.wait_notify(plugin.socket_path))
    assert (notified["registered"], notified["error"], notified["resource"]) == (True, "", RESOURCE)
    assert plugin.wait_registered(10)
    (container,) = check(watcher.allocate(RESOURCE, ["gpu-0", "gpu-1"]))["containers"]
    assert container["envs"] == {"GPUS": "0,1"}
    assert container["devices"] == [["/dev/gpu0", "/dev/gpu0", "rw"]]
    assert not watcher.find("register_failed")


def test_health_changes_reach_the_watcher(watcher: WatcherPeer, plugin: Any) -> None:
    watcher.wait_list(RESOURCE, lambda e: health(e)["gpu-0"] == "Healthy")
    plugin.set_health("gpu-0", False)
    watcher.wait_list(
        RESOURCE, lambda e: health(e) == {"gpu-0": "Unhealthy", "gpu-1": "Healthy", "gpu-2": "Unhealthy"}
    )
    plugin.set_health("gpu-2", True)
    plugin.set_health("gpu-0", True)
    watcher.wait_list(RESOURCE, lambda e: e["healthy"] == 3)
    assert len(watcher.find("register")) == 1, "health changes must not cost a re-registration"


def test_a_restarted_watcher_registers_the_same_socket_again(registry: str, plugin: Any) -> None:
    """The registry socket survives the kubelet; the new watcher finds it, and we need no restart."""
    first = WatcherPeer("go", registry)
    try:
        first.wait_notify(plugin.socket_path)
        assert plugin.wait_registered(10)
        plugin.set_health("gpu-1", False)
        first.wait_list(RESOURCE, lambda e: health(e)["gpu-1"] == "Unhealthy")
        inode = os.stat(plugin.socket_path).st_ino
        first.kill()
    finally:
        first.close()
    assert os.stat(plugin.socket_path).st_ino == inode, "the watcher must not touch the socket"
    wait_until(lambda: not plugin.registered, what="the plugin to notice nobody has it registered")
    # An older kubelet's watcher sent the socket path as :authority: take that too.
    second = WatcherPeer("go", registry, authority="path")
    try:
        assert second.wait_registered(RESOURCE)["socket"] == plugin.socket_path
        listed = second.wait_list(RESOURCE, lambda e: e["count"] == 3)
        assert health(listed)["gpu-1"] == "Unhealthy", "the device state carries over"
        assert check(second.wait_notify(plugin.socket_path))["registered"] is True
        assert plugin.wait_registered(10)
        assert check(second.allocate(RESOURCE, ["gpu-0"]))["containers"][0]["envs"] == {"GPUS": "0"}
    finally:
        second.close()
    assert plugin.impl.refreshed == 1, "our server never restarted"
    assert os.stat(plugin.socket_path).st_ino == inode


def test_a_removed_socket_is_deregistered(watcher: WatcherPeer, plugin: Any) -> None:
    """Stopping the plugin removes its registry socket: the watcher deregisters it."""
    watcher.wait_notify(plugin.socket_path)
    since = watcher.mark()
    plugin.stop()
    watcher.wait_for("deregister", since, socket=plugin.socket_path, resource=RESOURCE)
    watcher.wait_for("stream_end", since, resource=RESOURCE)
    gone = watcher.allocate(RESOURCE, ["gpu-0"])
    assert (gone["code"], gone["message"]) == (-1, f'no plugin registered for "{RESOURCE}"')


def error_for(socket: str, kind: str) -> str:
    if kind == "type":
        return f"RegisterPlugin error -- no handler registered for plugin type: CSIPlugin at socket {socket}"
    validation = "RegisterPlugin error -- plugin validation failed with err: "
    if kind == "name":
        return validation + 'invalid name of device plugin socket: the ResourceName "Bad_Name" is invalid'
    return validation + "manager version, v1beta1, is not among plugin supported versions [v1alpha1]"


@pytest.mark.parametrize(
    "info, kind",
    [
        (reg.PluginInfo(type="CSIPlugin", name="csi.example.com", supported_versions=["1.0.0"]), "type"),
        (reg.PluginInfo(type="DevicePlugin", name="Bad_Name", supported_versions=["v1beta1"]), "name"),
        (reg.PluginInfo(type="DevicePlugin", name=RESOURCE, supported_versions=["v1alpha1"]), "versions"),
    ],
    ids=["csi-plugin", "bad-name", "bad-versions"],
)
def test_the_watcher_notifies_a_refusal(registry: str, info: reg.PluginInfo, kind: str) -> None:
    """A registration socket the device manager will not take gets Notify(false) with the kubelet's text.

    sdplite cannot build such a plugin (it validates), so sdplite's wire.Server
    serves just the Registration service here.
    """
    path = os.path.join(registry, "other.sock")
    statuses: list[reg.RegistrationStatus] = []
    notified = threading.Event()

    def get_info(request: reg.InfoRequest, context: ServerContext) -> reg.PluginInfo:
        return info

    def notify(request: reg.RegistrationStatus, context: ServerContext) -> reg.RegistrationStatusResponse:
        statuses.append(request)
        notified.set()
        return reg.RegistrationStatusResponse()

    server = Server(
        path,
        [
            unary(paths.GET_INFO, get_info, reg.InfoRequest),
            unary(paths.NOTIFY_REGISTRATION_STATUS, notify, reg.RegistrationStatus),
        ],
    )
    server.start()
    try:
        peer = WatcherPeer("go", registry)
        try:
            assert notified.wait(WAIT), "NotifyRegistrationStatus never came"
            event = check(peer.wait_notify(path))
            # The kubelet retries a refused socket with backoff.
            failed = peer.wait_for("register_failed", socket=path)
        finally:
            peer.close()
    finally:
        server.stop(0)
    expected = error_for(path, kind)
    assert (statuses[0].plugin_registered, statuses[0].error) == (False, expected)
    assert (event["registered"], event["error"]) == (False, expected)
    assert failed["retry_ms"] == 500
    assert not peer.find("register")
