"""What sdplite must do with a real gRPC peer: the tests both peers are held to.

tests/test_interop_go.py runs them against grpc-go (the kubelet's gRPC) and
tests/test_interop_js.py against grpc-js; each provides the ``kind`` fixture.
Two roles each:

- the peer is the kubelet: it serves Registration on ``kubelet.sock`` in
  ``sock_dir``, our plugin (``sdplite.build``) registers, the peer dials back
  and calls the plugin (``kubelet`` fixture);
- the peer is a DevicePlugin server and our ``sdplite.wire.Channel`` calls it
  (``peer_server`` and ``channel`` fixtures).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import h2.events
import h2.settings
import pytest

from sdplite import Device, DeviceNode, Mount, PluginError, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import paths
from sdplite.wire import Channel, GrpcError, StatusCode
from sdplite.wire.client import ClientProtocol
from sdplite.wire.h2_protocol import CallState
from sdplite.wire.server_protocol import ServerProtocol

from .peers import KubeletPeer, PluginPeer, check, digest

RESOURCE = "example.com/gpu"
MiB = 1024 * 1024
SIZES = [MiB, int(3.9 * MiB)]
SIZE_IDS = ["1MiB", "3.9MiB"]
NON_ASCII = "périphérique «gpu-0» indisponible: 100% occupé ✗ 设备"


# -- fixtures --------------------------------------------------------------------


@pytest.fixture
def kubelet(kind: str, sock_dir: str) -> Iterator[KubeletPeer]:
    peer = KubeletPeer(kind, sock_dir)
    yield peer
    peer.close()


@pytest.fixture
def started() -> Iterator[Callable[[Any], Any]]:
    """start(plugin) runs our plugin in the background and stops it after the test."""
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


@pytest.fixture
def peer_server(kind: str, sock_dir: str) -> Iterator[PluginPeer]:
    peer = PluginPeer(kind, os.path.join(sock_dir, "dp.sock"))
    yield peer
    peer.close()


@pytest.fixture
def channel(peer_server: PluginPeer) -> Iterator[Channel]:
    with Channel(peer_server.socket) as ch:
        yield ch


@dataclass
class WindowChange:
    side: str  # "server" (our plugin's server) or "client" (our Channel)
    old: int
    new: int
    open_calls: int  # our calls with a response/request under way at that moment


@pytest.fixture
def window_changes(monkeypatch: pytest.MonkeyPatch) -> list[WindowChange]:
    """Every INITIAL_WINDOW_SIZE a peer announces to our transport (observed, not altered)."""
    seen: list[WindowChange] = []

    def probe_for(cls: Any, side: str) -> None:
        on_events = cls.on_events

        def probe(protocol: Any, events: list[Any]) -> Any:
            for event in events:
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    change = event.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
                    if change is not None:
                        busy = sum(1 for c in protocol.calls.values() if c.state is CallState.SENDING)
                        seen.append(WindowChange(side, change.original_value, change.new_value, busy))
            return on_events(protocol, events)

        monkeypatch.setattr(cls, "on_events", probe)

    probe_for(ServerProtocol, "server")
    probe_for(ClientProtocol, "client")
    return seen


# -- helpers -----------------------------------------------------------------------


class Hooks:
    """Our plugin in these tests: every optional hook; PreStartContainer can be held."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices = list(devices)
        self.pre_started: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def list_and_watch(self, watch: Any) -> None:
        watch.send(self.devices)
        watch.wait()

    def get_preferred_allocation(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        rest = [d for d in sorted(available, reverse=True) if d not in must_include]
        return (must_include + rest)[:size]

    def pre_start_container(self, device_ids: list[str]) -> None:
        self.release.wait()
        self.pre_started.append(device_ids)


GPUS = [
    Device(
        "gpu-0",
        numa_nodes=[0],
        nodes=[DeviceNode("/dev/gpu0", "/dev/g0", "r")],
        mounts=[Mount("/opt/gpu0")],
        envs={"GPUS": "0"},
        annotations={"gpu/0": "yes"},
        cdi_devices=["example.com/gpu=0"],
    ),
    Device("gpu-1", numa_nodes=[1], nodes=[DeviceNode("/dev/gpu1")], envs={"GPUS": "1"}),
    Device("gpu-2", healthy=False),
]


def plugin_with_gpus(directory: str) -> tuple[Any, Hooks]:
    hooks = Hooks(GPUS)
    return build(RESOURCE, "gpu.sock", hooks, plugin_dir=directory), hooks


def health(event: dict[str, Any]) -> dict[str, str]:
    return {device[0]: device[1] for device in event["devices"]}


def ids_of_size(size: int, width: int = 36) -> list[str]:
    """Device IDs ("dev-" + digits, 40 chars) whose ListAndWatch message is about ``size`` bytes."""
    per_device = len(
        pb.ListAndWatchResponse(
            devices=[pb.Device(ID="d" * (width + 4), health="Healthy")]
        ).SerializeToString()
    )
    ids = [f"dev-{i:0{width}d}" for i in range(size // per_device)]
    encoded = len(
        pb.ListAndWatchResponse(devices=[pb.Device(ID=i, health="Healthy") for i in ids]).SerializeToString()
    )
    assert 0.99 * size <= encoded < 4 * MiB - 5, encoded  # near the size asked for, under the kubelet's limit
    return ids


# -- the peer as the kubelet ---------------------------------------------------------


def test_plugin_registers_and_the_kubelet_dials_back(kubelet: KubeletPeer, started: Any) -> None:
    """Register succeeds only after the peer dialled our socket and got our options; then the list flows."""
    plugin, _ = plugin_with_gpus(kubelet.directory)
    started(plugin)
    registered = kubelet.wait_registered(RESOURCE)
    assert (registered["version"], registered["endpoint"]) == ("v1beta1", "gpu.sock")
    both = {"pre_start_required": True, "get_preferred_allocation_available": True}
    assert registered["request_options"] == registered["options"] == both
    first = kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
    assert first["devices"] == [
        ["gpu-0", "Healthy", [0]],
        ["gpu-1", "Healthy", [1]],
        ["gpu-2", "Unhealthy", []],
    ]
    assert plugin.wait_registered(10)


def test_old_kubelets_send_the_socket_path_as_authority(kind: str, sock_dir: str, started: Any) -> None:
    """A kubelet older than 1.26 dials with the socket path as :authority; we serve it all the same."""
    kubelet = KubeletPeer(kind, sock_dir, authority="path")
    try:
        plugin, _ = plugin_with_gpus(sock_dir)
        started(plugin)
        kubelet.wait_registered(RESOURCE)
        kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
        assert check(kubelet.allocate(RESOURCE, ["gpu-1"]))["containers"][0]["envs"] == {"GPUS": "1"}
    finally:
        kubelet.close()


def test_health_changes_reach_the_kubelet(kubelet: KubeletPeer, started: Any) -> None:
    """set_health pushes a complete new list down the open ListAndWatch, each way."""
    plugin, _ = plugin_with_gpus(kubelet.directory)
    started(plugin)
    kubelet.wait_list(RESOURCE, lambda e: health(e)["gpu-0"] == "Healthy")
    plugin.set_health("gpu-0", False)
    kubelet.wait_list(
        RESOURCE, lambda e: health(e) == {"gpu-0": "Unhealthy", "gpu-1": "Healthy", "gpu-2": "Unhealthy"}
    )
    plugin.set_health("gpu-2", True)
    plugin.set_health("gpu-0", True)
    kubelet.wait_list(RESOURCE, lambda e: e["healthy"] == 3)
    assert len(kubelet.find("register")) == 1, "health changes must not cost a re-registration"


def test_allocate_hands_out_the_devices_data(kubelet: KubeletPeer, started: Any) -> None:
    """Allocate answers per container with the devices' envs, device nodes, mounts, annotations, CDI names."""
    started(plugin_with_gpus(kubelet.directory)[0])
    kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
    first, second = check(kubelet.allocate(RESOURCE, ["gpu-0", "gpu-1"], ["gpu-1"]))["containers"]
    assert first == {
        "envs": {"GPUS": "0,1"},
        "annotations": {"gpu/0": "yes"},
        "devices": [["/dev/g0", "/dev/gpu0", "r"], ["/dev/gpu1", "/dev/gpu1", "rw"]],
        "mounts": [["/opt/gpu0", "/opt/gpu0", True]],
        "cdi": ["example.com/gpu=0"],
    }
    assert second["envs"] == {"GPUS": "1"}
    refused = check(kubelet.allocate(RESOURCE, ["gpu-2"]), StatusCode.INVALID_ARGUMENT)
    assert "unhealthy devices ['gpu-2']" in refused["message"]


def test_get_preferred_allocation(kubelet: KubeletPeer, started: Any) -> None:
    """GetPreferredAllocation returns the plugin's choice, must-include devices first."""
    started(plugin_with_gpus(kubelet.directory)[0])
    kubelet.wait_registered(RESOURCE)
    reply = check(kubelet.preferred(RESOURCE, ["gpu-0", "gpu-1", "gpu-2"], ["gpu-0"], 2))
    assert reply["ids"] == ["gpu-0", "gpu-2"]


class SendOnce:
    """A plugin that sends its list once; health then comes only through set_health."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices = list(devices)

    def list_and_watch(self, watch: Any) -> None:
        watch.send(self.devices)
        watch.wait()


def test_replicas_share_devices_and_their_health(kubelet: KubeletPeer, started: Any) -> None:
    """Replicas: two IDs per GPU with its topology; Allocate maps them back and merges the data;
    the default GetPreferredAllocation spreads; one push turns all of a GPU's replicas Unhealthy."""
    plugin = build(RESOURCE, "gpu.sock", SendOnce(GPUS[:2]), plugin_dir=kubelet.directory, replicas=2)
    started(plugin)
    registered = kubelet.wait_registered(RESOURCE)
    assert registered["options"]["get_preferred_allocation_available"] is True
    first = kubelet.wait_list(RESOURCE, lambda e: e["count"] == 4)
    assert first["devices"] == [
        ["gpu-0::0", "Healthy", [0]],
        ["gpu-0::1", "Healthy", [0]],
        ["gpu-1::0", "Healthy", [1]],
        ["gpu-1::1", "Healthy", [1]],
    ]
    (container,) = check(kubelet.allocate(RESOURCE, ["gpu-0::0", "gpu-0::1", "gpu-1::1"]))["containers"]
    assert container["devices"] == [["/dev/g0", "/dev/gpu0", "r"], ["/dev/gpu1", "/dev/gpu1", "rw"]]
    assert container["envs"] == {"GPUS": "0,1"} and container["cdi"] == ["example.com/gpu=0"]
    everything = ["gpu-0::0", "gpu-0::1", "gpu-1::0", "gpu-1::1"]
    assert check(kubelet.preferred(RESOURCE, everything, [], 2))["ids"] == ["gpu-0::0", "gpu-1::0"]
    mark = kubelet.mark()
    plugin.set_health("gpu-1", False, "Xid 79")
    update = kubelet.wait_list(RESOURCE, lambda e: e["healthy"] == 2, since=mark)
    assert health(update) == {
        "gpu-0::0": "Healthy",
        "gpu-0::1": "Healthy",
        "gpu-1::0": "Unhealthy",
        "gpu-1::1": "Unhealthy",
    }
    assert len(kubelet.find("list", mark, resource=RESOURCE)) == 1, "one message for both replicas"


def test_pre_start_container_within_the_kubelets_30s_deadline(kubelet: KubeletPeer, started: Any) -> None:
    """PreStartContainer with the kubelet's 30 s deadline reaches the hook and succeeds."""
    plugin, hooks = plugin_with_gpus(kubelet.directory)
    started(plugin)
    kubelet.wait_registered(RESOURCE)
    check(kubelet.pre_start(RESOURCE, ["gpu-0", "gpu-1"]))
    assert hooks.pre_started == [["gpu-0", "gpu-1"]]


def test_pre_start_container_past_a_short_deadline_is_deadline_exceeded(
    kubelet: KubeletPeer, started: Any
) -> None:
    """A hook slower than the caller's deadline gives DEADLINE_EXCEEDED; the plugin keeps serving."""
    plugin, hooks = plugin_with_gpus(kubelet.directory)
    started(plugin)
    kubelet.wait_registered(RESOURCE)
    hooks.release.clear()
    try:
        check(kubelet.pre_start(RESOURCE, ["gpu-1"], timeout_ms=300), StatusCode.DEADLINE_EXCEEDED)
    finally:
        hooks.release.set()
    check(kubelet.pre_start(RESOURCE, ["gpu-0"]))
    assert check(kubelet.allocate(RESOURCE, ["gpu-0"]))["containers"][0]["envs"] == {"GPUS": "0"}


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_large_device_lists_reach_the_kubelet_whole(kubelet: KubeletPeer, started: Any, size: int) -> None:
    """Lists of ~1 MiB and ~3.9 MiB (20k and 77k devices) arrive complete, and so do later changes."""
    ids = ids_of_size(size)
    plugin = started(build(RESOURCE, "big.sock", lambda: ids, plugin_dir=kubelet.directory, interval=3600))
    expected = [(i, "Healthy") for i in ids]
    kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
    plugin.set_health(ids[-1], False)
    expected[-1] = (ids[-1], "Unhealthy")
    event = kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
    assert (event["count"], event["healthy"]) == (len(ids), len(ids) - 1)


def test_window_size_changes_mid_stream(
    kind: str, sock_dir: str, started: Any, window_changes: list[WindowChange]
) -> None:
    """New INITIAL_WINDOW_SIZE settings arriving while a 3.9 MiB list is being sent lose and stall nothing."""
    kubelet = KubeletPeer(kind, sock_dir, change_windows=True)
    try:
        ids = ids_of_size(int(3.9 * MiB))
        plugin = started(build(RESOURCE, "big.sock", lambda: ids, plugin_dir=sock_dir, interval=3600))
        expected = [(i, "Healthy") for i in ids]
        kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
        for n in range(3):
            plugin.set_health(ids[n], False)
            expected[n] = (ids[n], "Unhealthy")
            kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
    finally:
        kubelet.close()
    during_stream = [c for c in window_changes if c.side == "server" and c.open_calls]
    assert during_stream, f"the peer never changed its window mid-stream: {window_changes}"


def test_concurrent_kubelet_calls_while_a_big_list_changes(kubelet: KubeletPeer, started: Any) -> None:
    """40 Allocate and PreStartContainer calls at once, beside a changing 1 MiB list: all answered."""
    ids = ids_of_size(MiB)
    hooks = Hooks([Device(i) for i in ids])
    plugin = started(build(RESOURCE, "big.sock", hooks, plugin_dir=kubelet.directory))
    expected = [(i, "Healthy") for i in ids]
    kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
    calls = [kubelet.start("allocate", resource=RESOURCE, containers=[[ids[n]]]) for n in range(20)]
    calls += [kubelet.start("pre_start", resource=RESOURCE, ids=[ids[n]]) for n in range(20)]
    for n in range(20, 25):
        plugin.set_health(ids[n], False)
        expected[n] = (ids[n], "Unhealthy")
    for number in calls:
        check(kubelet.reply(number))
    kubelet.wait_list(RESOURCE, lambda e: e["digest"] == digest(expected))
    assert sorted(hooks.pre_started) == sorted([i] for i in ids[:20])


def test_kubelet_cancelling_the_stream_makes_the_plugin_register_again(
    kubelet: KubeletPeer, started: Any
) -> None:
    """The kubelet cancelling ListAndWatch makes the plugin register again and resend its list."""
    started(plugin_with_gpus(kubelet.directory)[0])
    kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3, registration=1)
    # Cancelled at once: the loss may come before our Register call has returned.
    check(kubelet.call("cancel_stream", resource=RESOURCE))
    ended = kubelet.wait_for("stream_end", registration=1)
    assert StatusCode(ended["code"]) == StatusCode.CANCELLED
    again = kubelet.wait_registered(RESOURCE, number=2)
    kubelet.wait_list(
        RESOURCE, lambda e: e["count"] == 3 and e["seq"] == 1, registration=again["registration"]
    )


def test_killed_kubelet_then_a_new_one(kind: str, sock_dir: str, started: Any) -> None:
    """A kubelet killed outright (connections drop, kubelet.sock stays): the next one gets the plugin."""
    first = KubeletPeer(kind, sock_dir)
    try:
        started(plugin_with_gpus(sock_dir)[0])
        first.wait_list(RESOURCE, lambda e: e["count"] == 3)
    finally:
        first.kill()
    assert os.path.exists(os.path.join(sock_dir, "kubelet.sock")), "a killed kubelet leaves its socket"
    second = KubeletPeer(kind, sock_dir)
    try:
        second.wait_registered(RESOURCE)
        second.wait_list(RESOURCE, lambda e: e["count"] == 3)
        assert check(second.allocate(RESOURCE, ["gpu-0"]))["containers"][0]["envs"] == {"GPUS": "0"}
    finally:
        second.close()


def test_kubelet_restart_wipes_the_sockets_and_the_plugin_registers_again(
    kind: str, sock_dir: str, started: Any
) -> None:
    """Twice: the kubelet stops, deletes all sockets but its checkpoint, starts; the plugin comes back."""
    checkpoint = os.path.join(sock_dir, "kubelet_internal_checkpoint")
    with open(checkpoint, "w") as f:
        f.write("{}")
    kubelet = KubeletPeer(kind, sock_dir)
    plugin, _ = plugin_with_gpus(sock_dir)
    started(plugin)
    try:
        kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
        for _ in range(2):
            kubelet.stop()
            kubelet = KubeletPeer(kind, sock_dir, cleanup=True)
            assert "kubelet_internal_checkpoint" not in kubelet.find("cleanup")[0]["removed"]
            kubelet.wait_registered(RESOURCE)
            kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
            assert check(kubelet.allocate(RESOURCE, ["gpu-1"]))["containers"][0]["envs"] == {"GPUS": "1"}
    finally:
        kubelet.close()
    assert os.path.exists(checkpoint)
    assert os.path.exists(plugin.socket_path), "the plugin serves on a fresh socket"


def test_set_health_survives_a_kubelet_restart(kind: str, sock_dir: str, started: Any) -> None:
    """docs/guide.md's Health pattern (list once, then set_health): a device known to be bad stays
    unhealthy on the new kubelet, and one set healthy again stays healthy."""
    kubelet = KubeletPeer(kind, sock_dir)
    plugin, _ = plugin_with_gpus(sock_dir)  # lists gpu-2 as unhealthy, once
    started(plugin)
    try:
        kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
        plugin.set_health("gpu-0", False)
        plugin.set_health("gpu-2", True)
        kubelet.wait_list(RESOURCE, lambda e: health(e)["gpu-0"] == "Unhealthy")
        kubelet.stop()
        kubelet = KubeletPeer(kind, sock_dir, cleanup=True)
        kubelet.wait_registered(RESOURCE)
        first = kubelet.wait_list(RESOURCE, lambda e: e["count"] == 3)
        assert health(first) == {"gpu-0": "Unhealthy", "gpu-1": "Healthy", "gpu-2": "Healthy"}
        refused = check(kubelet.allocate(RESOURCE, ["gpu-0"]), StatusCode.INVALID_ARGUMENT)
        assert "unhealthy devices ['gpu-0']" in refused["message"]
        assert check(kubelet.allocate(RESOURCE, ["gpu-2"]))["containers"]
    finally:
        kubelet.close()


# -- our client against the peer's DevicePlugin server ----------------------------------


def test_client_unary_calls(channel: Channel) -> None:
    """Unary calls return the server's answers: options, Allocate, GetPreferredAllocation."""
    options = channel.unary(paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions)
    assert options == pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=ids) for ids in (["a", "b"], ["c"])]
    )
    response = channel.unary(paths.ALLOCATE, request, pb.AllocateResponse)
    assert [dict(c.envs) for c in response.container_responses] == [{"IDS": "a,b"}, {"IDS": "c"}]
    preferred = channel.unary(
        paths.GET_PREFERRED_ALLOCATION,
        pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=["a", "b", "c"], must_include_deviceIDs=["c"], allocation_size=2
                )
            ]
        ),
        pb.PreferredAllocationResponse,
    )
    assert list(preferred.container_responses[0].deviceIDs) == ["c", "a"]


def test_client_stream_delivers_every_update_in_order_then_ends(
    channel: Channel, peer_server: PluginPeer
) -> None:
    """ListAndWatch from the peer: the current list, each published list in order, then a clean end."""
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    assert list(next(stream).devices) == []
    for n in range(1, 21):
        assert peer_server.publish([(f"d{i}", "Healthy") for i in range(n)]) == 1
    for n in range(1, 21):
        assert [d.ID for d in next(stream).devices] == [f"d{i}" for i in range(n)]
    peer_server.publish([("d0", "Unhealthy")])
    assert [(d.ID, d.health) for d in next(stream).devices] == [("d0", "Unhealthy")]
    peer_server.end_streams(StatusCode.OK)
    with pytest.raises(StopIteration):
        next(stream)
    assert stream.code == StatusCode.OK


def test_client_cancelling_a_stream_cancels_it_on_the_server(
    channel: Channel, peer_server: PluginPeer
) -> None:
    """cancel() ends the call with CANCELLED here and wakes the peer's handler; the connection lives on."""
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    next(stream)
    started = peer_server.wait_for("watch_started")
    stream.cancel()
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert info.value.code == StatusCode.CANCELLED
    peer_server.wait_for("watch_done", watcher=started["watcher"])
    assert channel.unary(
        paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions
    ).pre_start_required


def test_client_deadlines(channel: Channel, peer_server: PluginPeer) -> None:
    """A unary call and a stream past their deadlines fail with DEADLINE_EXCEEDED; the peer's handlers end."""
    mark = peer_server.mark()
    with pytest.raises(GrpcError) as info:
        channel.unary(
            paths.PRE_START_CONTAINER,
            pb.PreStartContainerRequest(devices_ids=["hang"]),
            pb.PreStartContainerResponse,
            timeout=0.3,
        )
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    peer_server.wait_for("pre_start_done", since=mark)
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse, timeout=0.5)
    next(stream)
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    peer_server.wait_for("watch_done", since=mark)


def test_client_sends_the_kubelets_deadline(channel: Channel, peer_server: PluginPeer) -> None:
    """The peer's handler sees our 30 s deadline as a deadline of at most 30 s."""
    channel.unary(
        paths.PRE_START_CONTAINER,
        pb.PreStartContainerRequest(devices_ids=["d0"]),
        pb.PreStartContainerResponse,
        timeout=paths.PRE_START_CONTAINER_TIMEOUT,
    )
    seen = peer_server.wait_for("pre_start")
    assert seen["ids"] == ["d0"] and 0 < seen["deadline_ms"] <= 30_000
    channel.unary(
        paths.PRE_START_CONTAINER,
        pb.PreStartContainerRequest(devices_ids=["d1"]),
        pb.PreStartContainerResponse,
    )
    assert peer_server.wait_for("pre_start", ids=["d1"])["deadline_ms"] == -1, "no timeout, no deadline"


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_client_large_messages_both_ways(channel: Channel, peer_server: PluginPeer, size: int) -> None:
    """A ~size request and response (Allocate echo) and a ~size ListAndWatch message cross intact."""
    ids = [f"id-{i:037d}" for i in range(size // 42)]
    request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)])
    assert 0.99 * size <= request.ByteSize() < 4 * MiB
    response = channel.unary(paths.ALLOCATE, request, pb.AllocateResponse)
    assert response.container_responses[0].envs["IDS"] == ",".join(ids)
    listed = ids_of_size(size)
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    next(stream)
    peer_server.publish(generate={"prefix": "dev-", "count": len(listed), "width": 36})
    assert [d.ID for d in next(stream).devices] == listed
    stream.cancel()


def test_client_window_size_changes_mid_request(
    kind: str, sock_dir: str, window_changes: list[WindowChange]
) -> None:
    """New INITIAL_WINDOW_SIZE settings while we send 3.9 MiB requests lose and stall nothing."""
    peer = PluginPeer(kind, os.path.join(sock_dir, "dp.sock"), change_windows=True)
    try:
        with Channel(peer.socket) as channel:
            for n in range(3):
                ids = [f"id-{n}-{i:035d}" for i in range(int(3.9 * MiB) // 42)]
                request = pb.AllocateRequest(
                    container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]
                )
                response = channel.unary(paths.ALLOCATE, request, pb.AllocateResponse)
                assert response.container_responses[0].envs["IDS"] == ",".join(ids)
    finally:
        peer.close()
    during_call = [c for c in window_changes if c.side == "client" and c.open_calls]
    assert during_call, f"the peer never changed its window during a call: {window_changes}"


def test_client_unknown_method_is_unimplemented(channel: Channel) -> None:
    """Calling a method or a service the peer does not serve fails with UNIMPLEMENTED."""
    for path in ("/v1beta1.DevicePlugin/Nope", "/no.Such/Service"):
        with pytest.raises(GrpcError) as info:
            channel.unary(path, pb.Empty(), pb.Empty)
        assert info.value.code == StatusCode.UNIMPLEMENTED
    assert channel.unary(
        paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions
    ).pre_start_required


def test_client_error_status_keeps_code_and_non_ascii_message(
    channel: Channel, peer_server: PluginPeer
) -> None:
    """An error status from the peer arrives with its code and exact unicode message, unary and streaming."""
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["!status", "9", NON_ASCII])]
    )
    with pytest.raises(GrpcError) as info:
        channel.unary(paths.ALLOCATE, request, pb.AllocateResponse)
    assert (info.value.code, info.value.message) == (StatusCode.FAILED_PRECONDITION, NON_ASCII)
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    next(stream)
    peer_server.end_streams(StatusCode.UNAVAILABLE, NON_ASCII)
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert (info.value.code, info.value.message) == (StatusCode.UNAVAILABLE, NON_ASCII)


def test_client_calls_end_when_the_server_drains(channel: Channel, peer_server: PluginPeer) -> None:
    """A graceful server stop ends our open stream with UNAVAILABLE naming the GOAWAY, so the drain finishes.

    grpc-go follows its GOAWAY with a PING (GracefulStop); frames after a
    GOAWAY are not a protocol error.
    """
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    next(stream)
    check(peer_server.call("drain"))
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert info.value.code == StatusCode.UNAVAILABLE
    assert "GOAWAY (NO_ERROR)" in info.value.message, info.value.message
    peer_server.wait_for("drained")


def test_client_sees_unavailable_when_the_server_dies(channel: Channel, peer_server: PluginPeer) -> None:
    """Killing the server mid-stream fails the stream and later calls with UNAVAILABLE."""
    stream = channel.server_streaming(paths.LIST_AND_WATCH, pb.Empty(), pb.ListAndWatchResponse)
    next(stream)
    peer_server.kill()
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert info.value.code == StatusCode.UNAVAILABLE
    with pytest.raises(GrpcError) as info:
        channel.unary(paths.GET_DEVICE_PLUGIN_OPTIONS, pb.Empty(), pb.DevicePluginOptions)
    assert info.value.code == StatusCode.UNAVAILABLE
