"""Registration through plugins_registry: the kubelet's plugin watcher finds us."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from sdplite import Device, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import pluginregistration_pb2 as reg
from sdplite.testing import KubeletEmulator

from conftest import wait_until

RESOURCE = "example.com/widget"


class Counting:
    def __init__(self) -> None:
        self.refreshed = 0

    def list_and_watch(self, watch: Any) -> None:
        watch.send([Device("w0"), Device("w1")])
        watch.wait()

    def refresh(self) -> None:
        self.refreshed += 1


@pytest.fixture
def dirs(sock_dir: str) -> tuple[str, str]:
    return os.path.join(sock_dir, "dp"), os.path.join(sock_dir, "reg")


def test_emulated_plugin_watcher_registers_lists_and_allocates(dirs: tuple[str, str]) -> None:
    plugin_dir, registry = dirs
    impl = Counting()
    with KubeletEmulator(plugin_dir, registry_dir=registry) as kubelet:
        plugin = build(RESOURCE, "widget.sock", impl, registration="plugins_registry", registry_dir=registry)
        assert plugin.socket_path == os.path.join(registry, "widget.sock")
        plugin.start()
        try:
            assert plugin.wait_registered(10), "NotifyRegistrationStatus(true) never came"
            resource = kubelet.wait_for_devices(RESOURCE, count=2, healthy=2)
            assert resource.endpoint == plugin.socket_path
            assert kubelet.allocate(RESOURCE, ["w1"]).container_responses
            assert "widget.sock" not in os.listdir(plugin_dir)
            kubelet.restart()  # plugins_registry sockets survive a kubelet restart
            assert os.path.exists(plugin.socket_path)
            kubelet.wait_for_registration(RESOURCE, count=2)
            kubelet.wait_for_devices(RESOURCE, count=2)
            assert impl.refreshed == 1, "no restart of our own was needed"
        finally:
            plugin.stop()


def test_the_emulated_watcher_refuses_a_bad_name_with_the_kubelets_message(dirs: tuple[str, str]) -> None:
    plugin_dir, registry = dirs
    os.makedirs(registry)
    path = os.path.join(registry, "bad.sock")
    statuses: list[Any] = []

    def ser(message: Any) -> bytes:
        return message.SerializeToString()

    def notify(request: Any, context: Any) -> Any:
        statuses.append(request)
        return reg.RegistrationStatusResponse()

    handlers = {
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            lambda r, c: reg.PluginInfo(type="DevicePlugin", name="Bad_Name", supported_versions=["v1beta1"]),
            reg.InfoRequest.FromString,
            ser,
        ),
        "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
            notify, reg.RegistrationStatus.FromString, ser
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("pluginregistration.Registration", handlers),)
    )
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        with KubeletEmulator(plugin_dir, registry_dir=registry) as kubelet:
            assert kubelet.registry_dir == registry
            wait_until(lambda: bool(statuses), what="NotifyRegistrationStatus")
    finally:
        server.stop(0).wait()
    assert not statuses[0].plugin_registered
    assert statuses[0].error == (
        "RegisterPlugin error -- plugin validation failed with err: "
        'invalid name of device plugin socket: the ResourceName "Bad_Name" is invalid'
    )


@pytest.fixture
def registered_plugin(dirs: tuple[str, str]) -> Iterator[Any]:
    _, registry = dirs
    os.makedirs(registry)
    plugin = build(
        RESOURCE, "widget.sock", Counting(), registration="plugins_registry", registry_dir=registry
    )
    plugin.start()
    yield plugin
    plugin.stop()


def test_a_grpcio_plugin_watcher_connects_lists_and_allocates(registered_plugin: Any) -> None:
    """A real gRPC peer doing the watcher's steps: GetInfo, options, ListAndWatch, Allocate, Notify."""
    path = registered_plugin.socket_path
    wait_until(lambda: os.path.exists(path), what="the plugin's socket")

    def ser(message: Any) -> bytes:
        return message.SerializeToString()

    with grpc.insecure_channel(f"unix:{path}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        info = channel.unary_unary(
            "/pluginregistration.Registration/GetInfo", ser, reg.PluginInfo.FromString
        )(reg.InfoRequest(), timeout=1)
        assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
            "DevicePlugin",
            RESOURCE,
            "",
            ["v1beta1"],
        )
        options = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetDevicePluginOptions", ser, pb.DevicePluginOptions.FromString
        )(pb.Empty())
        assert options == pb.DevicePluginOptions()
        stream = channel.unary_stream(
            "/v1beta1.DevicePlugin/ListAndWatch", ser, pb.ListAndWatchResponse.FromString
        )(pb.Empty())
        assert [d.ID for d in next(stream).devices] == ["w0", "w1"]
        allocate = channel.unary_unary("/v1beta1.DevicePlugin/Allocate", ser, pb.AllocateResponse.FromString)
        response = allocate(
            pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["w0"])])
        )
        assert len(response.container_responses) == 1
        assert not registered_plugin.registered
        channel.unary_unary(
            "/pluginregistration.Registration/NotifyRegistrationStatus",
            ser,
            reg.RegistrationStatusResponse.FromString,
        )(reg.RegistrationStatus(plugin_registered=True), timeout=5)
        assert registered_plugin.wait_registered(5)
        stream.cancel()


def test_registration_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="'kubelet' or 'plugins_registry'"):
        build(RESOURCE, "w.sock", lambda: [], registration="watcher")


def test_registry_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDPLITE_REGISTRY_DIR", "/run/reg")
    plugin = build(RESOURCE, "w.sock", lambda: [], registration="plugins_registry")
    assert plugin.socket_path == "/run/reg/w.sock"
    monkeypatch.delenv("SDPLITE_REGISTRY_DIR")
    plugin = build(RESOURCE, "w.sock", lambda: [], registration="plugins_registry")
    assert plugin.socket_path == "/var/lib/kubelet/plugins_registry/w.sock"
