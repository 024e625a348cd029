"""The DRA kubelet plugin over its sockets, with sdplite's own client as the kubelet.

The real-peer tests (grpc-go as the kubelet) are in test_interop_go_dra.py;
these cover the rules: both DRAPlugin versions, per-claim errors,
idempotency, the checkpoint across restarts, the health stream, registration
info, and the API-server side against the test API server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dra_support import DRIVER, GPUS, NODE, api_server, make_plugin

from sdplite import Allocation, Device, DeviceListError, dra
from sdplite.api import dra_v1_pb2 as v1
from sdplite.api import dra_v1beta1_pb2 as v1beta1
from sdplite.api import drahealth_v1_pb2 as health_v1
from sdplite.api import drahealth_v1alpha1_pb2 as health_v1alpha1
from sdplite.api import paths
from sdplite.api import pluginregistration_pb2 as reg
from sdplite.dra.plugin import socket_paths
from sdplite.testing.apiserver import FakeAPIServer
from sdplite.wire import Channel

from conftest import wait_until


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    server = api_server()
    yield server
    server.stop()


class Hooks:
    def __init__(self) -> None:
        self.prepared: list[dra.Claim] = []
        self.unprepared: list[dra.Claim] = []
        self.fail_on: set[str] = set()

    def prepare(self, claim: dra.Claim) -> Any:
        if claim.name in self.fail_on:
            raise RuntimeError(f"cannot set up {claim.name}")
        self.prepared.append(claim)
        return None

    def unprepare(self, claim: dra.Claim) -> None:
        self.unprepared.append(claim)


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def plugin(sock_dir: str, api: FakeAPIServer, hooks: Hooks) -> Iterator[dra.DRAPlugin]:
    p = make_plugin(sock_dir, api, prepare=hooks.prepare, unprepare=hooks.unprepare).start()
    wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
    yield p
    p.stop()


def claim(module: Any, namespace: str, uid: str, name: str) -> Any:
    return module.Claim(namespace=namespace, uid=uid, name=name)


def prepare(path: str, claims: list[tuple[str, str, str]], module: Any = v1, method: str = "") -> Any:
    with Channel(path) as channel:
        request = module.NodePrepareResourcesRequest(claims=[claim(module, *c) for c in claims])
        route = method or (paths.DRA_V1_PREPARE if module is v1 else paths.DRA_V1BETA1_PREPARE)
        return channel.unary(route, request, module.NodePrepareResourcesResponse, timeout=45)


def unprepare(path: str, claims: list[tuple[str, str, str]], module: Any = v1) -> Any:
    with Channel(path) as channel:
        request = module.NodeUnprepareResourcesRequest(claims=[claim(module, *c) for c in claims])
        route = paths.DRA_V1_UNPREPARE if module is v1 else paths.DRA_V1BETA1_UNPREPARE
        return channel.unary(route, request, module.NodeUnprepareResourcesResponse, timeout=45)


def devices_of(response: Any, uid: str) -> list[tuple[list[str], str, str]]:
    entry = response.claims[uid]
    assert entry.error == "", entry.error
    return [(list(d.request_names), d.pool_name, d.device_name) for d in entry.devices]


# -- registration ----------------------------------------------------------------


def test_get_info_names_the_dra_versions_and_the_service_socket(plugin: dra.DRAPlugin) -> None:
    with Channel(plugin.socket_path) as channel:
        info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo)
    assert (info.type, info.name, info.endpoint) == ("DRAPlugin", DRIVER, plugin.service_path)
    assert os.path.isabs(info.endpoint)
    assert list(info.supported_versions) == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    with Channel(plugin.socket_path) as channel:
        channel.unary(
            paths.NOTIFY_REGISTRATION_STATUS,
            reg.RegistrationStatus(plugin_registered=True),
            reg.RegistrationStatusResponse,
        )
    assert plugin.registered


def test_without_health_the_health_services_are_not_advertised(sock_dir: str, api: FakeAPIServer) -> None:
    with make_plugin(sock_dir, api, health=False) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        with Channel(p.socket_path) as channel:
            info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo)
        # Still served: 1.36 kubelets open the stream whatever is advertised, and log each refusal.
        with Channel(p.service_path) as channel:
            request, response = health_v1.NodeWatchResourcesRequest(), health_v1.NodeWatchResourcesResponse
            with channel.server_streaming(paths.DRA_HEALTH_V1_WATCH, request, response) as stream:
                assert len(next(stream).devices) == 3
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]


def test_rolling_update_names_each_pod_its_own_sockets() -> None:
    reg_a, svc_a = socket_paths(DRIVER, "/r", "/p/gpu", "uid-a")
    reg_b, svc_b = socket_paths(DRIVER, "/r", "/p/gpu", "uid-b")
    assert (reg_a, svc_a) == ("/r/gpu.example.com-uid-a-reg.sock", "/p/gpu/dra-uid-a.sock")
    assert len({reg_a, reg_b, svc_a, svc_b}) == 4
    assert socket_paths(DRIVER, "/r", "/p/gpu", None) == ("/r/gpu.example.com-reg.sock", "/p/gpu/dra.sock")
    long_uid = "0123456789abcdef" * 6
    registration, service = socket_paths(DRIVER, "/r" * 10, "/p" * 20, long_uid)
    assert len(registration.encode()) <= 107 and len(service.encode()) <= 107
    assert registration != socket_paths(DRIVER, "/r" * 10, "/p" * 20, long_uid[::-1])[0]


def test_bad_names_are_refused_up_front(sock_dir: str, api: FakeAPIServer) -> None:
    with pytest.raises(ValueError, match="lower-case DNS subdomain"):
        make_plugin(sock_dir, api, devices=[]).__class__  # noqa: B018 - constructed fine
        dra.build("GPU_Example", node_name=NODE, kube=None)
    with pytest.raises(DeviceListError, match="DNS label"):
        make_plugin(sock_dir, api, devices=[Device("GPU 0")])
    with pytest.raises(DeviceListError, match="C identifier"):
        make_plugin(sock_dir, api, devices=[Device("gpu-0", attributes={"bad-name": 1})])
    with pytest.raises(DeviceListError, match="semantic version"):
        make_plugin(sock_dir, api, devices=[Device("gpu-0", attributes={"v": dra.Version("one")})])
    with pytest.raises(ValueError, match="NODE_NAME"):
        dra.build(DRIVER, kube=None, node_name="")


# -- prepare / unprepare --------------------------------------------------------------


@pytest.mark.parametrize("module", [v1, v1beta1], ids=["v1", "v1beta1"])
def test_several_claims_each_get_their_own_answer(
    plugin: dra.DRAPlugin, api: FakeAPIServer, hooks: Hooks, module: Any
) -> None:
    """Both versions' paths: one claim prepared, one unknown to the API server, one whose hook fails."""
    good = api.add_claim("default", "good", DRIVER, [("gpu", "gpu-0"), ("gpu", "gpu-1")])
    failing = api.add_claim("default", "failing", DRIVER, [("gpu", "gpu-1")])
    hooks.fail_on.add("failing")
    response = prepare(
        plugin.service_path,
        [("default", good, "good"), ("default", "missing-uid", "missing"), ("default", failing, "failing")],
        module,
    )
    assert set(response.claims) == {good, "missing-uid", failing}
    assert devices_of(response, good) == [(["gpu"], NODE, "gpu-0"), (["gpu"], NODE, "gpu-1")]
    assert (
        "resourceclaims" in response.claims["missing-uid"].error
        and "not found" in response.claims["missing-uid"].error
    )
    assert response.claims[failing].error == "RuntimeError: cannot set up failing"
    assert [c.name for c in hooks.prepared] == ["good"]
    assert [d.device for d in hooks.prepared[0].devices] == [GPUS[0], GPUS[1]]
    assert plugin.prepared_claims == [good]


def test_claim_config_and_subrequests_reach_the_hook(
    plugin: dra.DRAPlugin, api: FakeAPIServer, hooks: Hooks
) -> None:
    uid = api.add_claim(
        "ns",
        "c",
        DRIVER,
        [("gpu/big", "gpu-0")],
        config=[{"parameters": {"mode": "all"}}, {"requests": ["gpu"], "parameters": {"mode": "gpu"}}],
    )
    response = prepare(plugin.service_path, [("ns", uid, "c")])
    assert devices_of(response, uid) == [(["gpu"], NODE, "gpu-0")]  # the base request name
    (seen,) = hooks.prepared
    assert seen.devices[0].request == "gpu"
    assert seen.devices[0].config == ({"mode": "all"}, {"mode": "gpu"})


def test_a_claim_of_another_uid_or_unallocated_is_refused(plugin: dra.DRAPlugin, api: FakeAPIServer) -> None:
    api.add_claim("ns", "recreated", DRIVER, [("gpu", "gpu-0")])
    api.add_claim("ns", "pending", DRIVER, [("gpu", "gpu-0")], allocated=False)
    response = prepare(plugin.service_path, [("ns", "old-uid", "recreated"), ("ns", "x", "pending")])
    assert "deleted and re-created" in response.claims["old-uid"].error
    assert "UID" in response.claims["x"].error or "not allocated" in response.claims["x"].error


def test_prepare_is_idempotent_and_the_hook_runs_once(
    plugin: dra.DRAPlugin, api: FakeAPIServer, hooks: Hooks
) -> None:
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    first = prepare(plugin.service_path, [("default", uid, "c")])
    reads = sum(1 for r in api.requests if "resourceclaims" in r.path)
    again = prepare(plugin.service_path, [("default", uid, "c")], v1beta1)
    assert devices_of(again, uid) == devices_of(first, uid)
    assert len(hooks.prepared) == 1
    assert sum(1 for r in api.requests if "resourceclaims" in r.path) == reads, "answered from the checkpoint"


def test_empty_prepare_answers_ok(plugin: dra.DRAPlugin) -> None:
    """A liveness probe sends NodePrepareResources with no claims."""
    assert len(prepare(plugin.service_path, []).claims) == 0


def test_unprepare_of_unknown_or_repeated_claims_succeeds(
    plugin: dra.DRAPlugin, api: FakeAPIServer, hooks: Hooks
) -> None:
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    prepare(plugin.service_path, [("default", uid, "c")])
    first = unprepare(plugin.service_path, [("default", uid, "c"), ("default", "never", "n")])
    assert {k: v.error for k, v in first.claims.items()} == {uid: "", "never": ""}
    again = unprepare(plugin.service_path, [("default", uid, "c")], v1beta1)
    assert again.claims[uid].error == ""
    assert [c.uid for c in hooks.unprepared] == [uid]
    assert plugin.prepared_claims == []


def test_a_restarted_plugin_knows_what_it_prepared(sock_dir: str, api: FakeAPIServer, hooks: Hooks) -> None:
    """The checkpoint: a repeated Prepare gets the same answer without the hook; Unprepare works after
    the ResourceClaim is gone."""
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-1")])
    with make_plugin(sock_dir, api, prepare=hooks.prepare, unprepare=hooks.unprepare) as first:
        wait_until(lambda: os.path.exists(first.socket_path), what="the registration socket")
        before = prepare(first.service_path, [("default", uid, "c")])
    api.claims.clear()
    later = Hooks()
    with make_plugin(sock_dir, api, prepare=later.prepare, unprepare=later.unprepare) as second:
        wait_until(lambda: os.path.exists(second.socket_path), what="the registration socket")
        assert second.prepared_claims == [uid]
        after = prepare(second.service_path, [("default", uid, "c")])
        assert devices_of(after, uid) == devices_of(before, uid)
        assert later.prepared == []
        assert unprepare(second.service_path, [("default", uid, "c")]).claims[uid].error == ""
    (undone,) = later.unprepared
    assert (undone.namespace, undone.name, [d.name for d in undone.devices]) == ("default", "c", ["gpu-1"])
    assert [d.device for d in undone.devices] == [GPUS[1]]


def test_a_corrupt_checkpoint_is_set_aside(sock_dir: str, api: FakeAPIServer) -> None:
    path = os.path.join(sock_dir, "plugins", DRIVER, "checkpoint.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("{not json")
    p = make_plugin(sock_dir, api)
    assert p.prepared_claims == []
    assert os.path.exists(path + ".corrupt")


def test_claims_of_one_call_are_prepared_one_after_another(sock_dir: str, api: FakeAPIServer) -> None:
    """Serialised under one lock: the hook never runs twice at once, even for two concurrent calls."""
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(claim: dra.Claim) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.05)
        with lock:
            running[0] -= 1

    uids = [api.add_claim("default", f"c{i}", DRIVER, [("gpu", "gpu-0")]) for i in range(6)]
    with make_plugin(sock_dir, api, prepare=slow) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        calls = [
            threading.Thread(
                target=prepare,
                args=(p.service_path, [("default", u, f"c{i}") for i, u in enumerate(uids)][k::2]),
            )
            for k in range(2)
        ]
        for call in calls:
            call.start()
        for call in calls:
            call.join(30)
        assert sorted(p.prepared_claims) == sorted(uids)
    assert most[0] == 1


def test_hook_answers_shape_what_the_container_gets(sock_dir: str, api: FakeAPIServer) -> None:
    def prepare_hook(claim: dra.Claim) -> Any:
        if claim.name == "dict":
            return {"gpu-0": Allocation(cdi_devices=["vendor.com/gpu=0"])}
        if claim.name == "wrong":
            return 42
        return Allocation(cdi_devices=["vendor.com/gpu=all"])

    one = api.add_claim("default", "dict", DRIVER, [("a", "gpu-0"), ("b", "gpu-1")])
    two = api.add_claim("default", "whole", DRIVER, [("a", "gpu-0")])
    bad = api.add_claim("default", "wrong", DRIVER, [("a", "gpu-0")])
    with make_plugin(sock_dir, api, prepare=prepare_hook) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        response = prepare(
            p.service_path, [("default", one, "dict"), ("default", two, "whole"), ("default", bad, "wrong")]
        )
    assert [list(d.cdi_device_ids) for d in response.claims[one].devices] == [["vendor.com/gpu=0"], []]
    assert [list(d.cdi_device_ids) for d in response.claims[two].devices] == [["vendor.com/gpu=all"]]
    assert "return None, an sdplite.Allocation" in response.claims[bad].error


def test_without_api_access_prepare_says_how_to_fix_it(sock_dir: str, api: FakeAPIServer) -> None:
    with make_plugin(sock_dir, api, kube=None) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        response = prepare(p.service_path, [("default", "u", "c")])
    assert "no Kubernetes API access" in response.claims["u"].error


# -- health -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "path"),
    [(health_v1, paths.DRA_HEALTH_V1_WATCH), (health_v1alpha1, paths.DRA_HEALTH_V1ALPHA1_WATCH)],
    ids=["v1", "v1alpha1"],
)
def test_health_stream_lists_every_device_and_each_change(
    plugin: dra.DRAPlugin, module: Any, path: str
) -> None:
    with Channel(plugin.service_path) as channel:
        with channel.server_streaming(
            path, module.NodeWatchResourcesRequest(), module.NodeWatchResourcesResponse
        ) as stream:
            first = next(stream)
            assert [(d.device.pool_name, d.device.device_name, d.health) for d in first.devices] == [
                (NODE, "gpu-0", module.HEALTHY),
                (NODE, "gpu-1", module.HEALTHY),
                (NODE, "gpu-2", module.UNHEALTHY),
            ]
            assert all(d.last_updated_time > 0 for d in first.devices)
            plugin.set_health("gpu-1", False, "ECC errors: 12 uncorrectable" + "!" * 2000)
            second = next(stream)
            changed = second.devices[1]
            assert (changed.health, changed.message[:28]) == (
                module.UNHEALTHY,
                "ECC errors: 12 uncorrectable",
            )
            assert len(changed.message) == 1024 and changed.message.endswith("...")
            assert plugin.state.stream_count == 1
    wait_until(lambda: plugin.state.stream_count == 0, what="the stream to be forgotten")


def test_set_health_of_an_unknown_device_says_which_exist(plugin: dra.DRAPlugin) -> None:
    with pytest.raises(KeyError, match="gpu-0"):
        plugin.set_health("gpu-9", False)


# -- API server side ---------------------------------------------------------------------


def slices(api: FakeAPIServer) -> list[dict[str, Any]]:
    with api.lock:
        return [json.loads(json.dumps(s)) for _, s in sorted(api.slices.items())]


def test_slices_are_published_with_owner_and_pool(plugin: dra.DRAPlugin, api: FakeAPIServer) -> None:
    assert plugin.wait_published(10)
    (only,) = slices(api)
    node_uid = api.nodes[NODE]["metadata"]["uid"]
    assert only["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": True}
    ]
    assert only["metadata"]["name"].startswith(f"00000-{DRIVER}-{NODE}-")
    assert only["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    assert only["spec"]["devices"][0] == {
        "name": "gpu-0",
        "attributes": {
            "driverVersion": {"version": "1.2.3"},
            "index": {"int": 0},
            "model": {"string": "X1"},
            "ok": {"bool": True},
        },
        "capacity": {"memory": {"value": "80Gi"}},
    }
    writes = [r for r in api.requests if r.method != "GET"]
    assert [r.method for r in writes] == ["POST"], "one create, nothing else"
    assert all(r.token == api.token for r in api.requests)


def test_a_device_change_updates_in_place_and_bumps_the_generation(
    plugin: dra.DRAPlugin, api: FakeAPIServer
) -> None:
    assert plugin.wait_published(10)
    name = slices(api)[0]["metadata"]["name"]
    plugin.publish(GPUS[:2])
    assert api.wait(lambda: any(s["spec"]["pool"]["generation"] == 2 for s in api.slices.values()))
    (only,) = slices(api)
    assert only["metadata"]["name"] == name
    assert [d["name"] for d in only["spec"]["devices"]] == ["gpu-0", "gpu-1"]
    assert [r.method for r in api.requests if r.method != "GET"] == ["POST", "PUT"]


def test_many_devices_split_into_slices_and_stale_ones_go(plugin: dra.DRAPlugin, api: FakeAPIServer) -> None:
    assert plugin.wait_published(10)
    plugin.publish([Device(f"dev-{i}") for i in range(300)])
    assert api.wait(
        lambda: (
            len(api.slices) == 3 and all(s["spec"]["pool"]["generation"] == 2 for s in api.slices.values())
        )
    )
    counts = sorted(len(s["spec"]["devices"]) for s in slices(api))
    assert counts == [44, 128, 128]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices(api)} == {3}
    plugin.publish([])
    assert api.wait(
        lambda: len(api.slices) == 1 and next(iter(api.slices.values()))["spec"]["pool"]["generation"] == 3
    )
    assert slices(api)[0]["spec"]["devices"] == [], "an empty slice, not none"
    deletes = [r for r in api.requests if r.method == "DELETE"]
    assert len(deletes) == 2 and all(r.body["preconditions"]["resourceVersion"] for r in deletes)


def test_conflicts_and_server_errors_are_retried(sock_dir: str, api: FakeAPIServer) -> None:
    api.fail("POST", "/apis/resource.k8s.io/v1/resourceslices", 503, times=2)
    with make_plugin(sock_dir, api) as p:
        assert p.wait_published(20)
        api.fail("PUT", "/apis/resource.k8s.io/v1/resourceslices/", 409)
        p.publish(GPUS[:1])
        assert api.wait(lambda: any(s["spec"]["pool"]["generation"] == 2 for s in api.slices.values()), 20)
    statuses = [(r.method, r.status) for r in api.requests if r.method != "GET"]
    assert statuses == [("POST", 503), ("POST", 503), ("POST", 201), ("PUT", 409), ("PUT", 200)]


def test_slices_the_kubelet_wiped_come_back(plugin: dra.DRAPlugin, api: FakeAPIServer) -> None:
    assert plugin.wait_published(10)
    assert plugin.publisher is not None
    plugin.publisher.resync = 0.2
    plugin.publisher.changed()  # wake it, to take the short resync
    assert api.wipe_slices(NODE) == 1
    assert api.wait(lambda: len(api.slices) == 1, 20)
    assert slices(api)[0]["spec"]["pool"]["generation"] == 1, "a new pool starts again at 1"


def test_the_token_is_read_again_when_it_rotates(tmp_path: Any, api: FakeAPIServer) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token")
    kube = dra.KubeClient(api.url, token_file=str(token_file))
    with pytest.raises(dra.KubeError) as refused:
        kube.get(f"/api/v1/nodes/{NODE}")
    assert refused.value.status == 401 and not refused.value.transient
    token_file.write_text(api.token + "\n")
    assert kube.get(f"/api/v1/nodes/{NODE}")["metadata"]["name"] == NODE
    # Each 401 re-reads the file and tries once more: the first pair still finds the old token,
    # the second call's retry the new one (no waiting for the once-a-minute re-read).
    assert [r.token for r in api.requests] == ["old-token", "old-token", "old-token", api.token]


def test_in_cluster_settings_come_from_the_pod(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text(open(certifi.where()).read())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    kube = dra.KubeClient.in_cluster(str(tmp_path))
    assert kube.server == "https://[fd00::1]:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(dra.KubeError, match="not in a pod"):
        dra.KubeClient.in_cluster(str(tmp_path))
    with pytest.raises(ValueError, match="https://host:port"):
        dra.KubeClient("localhost:6443")


def test_an_unreachable_api_server_is_a_transient_error() -> None:
    kube = dra.KubeClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(dra.KubeError) as failed:
        kube.get("/api/v1/nodes/x")
    assert failed.value.status == 0 and failed.value.transient


def test_claim_names_are_quoted_into_the_url(plugin: dra.DRAPlugin, api: FakeAPIServer) -> None:
    """Names from the request cannot walk the API server's paths or add a query."""
    response = prepare(plugin.service_path, [("a/../../nodes", "u", "x?y=1")])
    assert "not found" in response.claims["u"].error
    (read,) = [r for r in api.requests if "namespaces" in r.path]
    assert (read.path, read.query) == (
        "/apis/resource.k8s.io/v1/namespaces/a%2F..%2F..%2Fnodes/resourceclaims/x%3Fy%3D1",
        {},
    )


def test_a_stopped_driver_leaves_no_threads_or_fds(sock_dir: str, api: FakeAPIServer, baseline: Any) -> None:
    with make_plugin(sock_dir, api) as p:
        assert p.wait_published(10)
        uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
        prepare(p.service_path, [("default", uid, "c")])
        with Channel(p.service_path) as channel:
            with channel.server_streaming(
                paths.DRA_HEALTH_V1_WATCH,
                health_v1.NodeWatchResourcesRequest(),
                health_v1.NodeWatchResourcesResponse,
            ) as stream:
                next(stream)
    assert not os.path.exists(p.socket_path) and not os.path.exists(p.service_path)
    baseline()


def test_the_status_file_counts_a_registered_driver_as_healthy(sock_dir: str, api: FakeAPIServer) -> None:
    from sdplite.status_file import check_status
    from sdplite.supervisor import Supervisor

    p = make_plugin(sock_dir, api)
    path = os.path.join(sock_dir, "status.json")
    supervisor = Supervisor([p], status_file=path)
    runner = threading.Thread(target=supervisor.run)
    runner.start()
    try:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        assert check_status(path)[0] is False, "not registered yet"
        with Channel(p.socket_path) as channel:
            channel.unary(
                paths.NOTIFY_REGISTRATION_STATUS,
                reg.RegistrationStatus(plugin_registered=True),
                reg.RegistrationStatusResponse,
            )
        wait_until(lambda: check_status(path)[0], what="a healthy status without any stream")
        with open(path) as handle:
            (entry,) = json.load(handle)["plugins"]
        assert (entry["kind"], entry["resource"], entry["devices"]) == ("DRAPlugin", DRIVER, 3)
    finally:
        supervisor.stop()
        runner.join(10)


def test_a_devices_own_reason_is_its_health_message(plugin: dra.DRAPlugin) -> None:
    """The same Device.reason a device plugin logs is what the kubelet shows users for DRA."""
    plugin.publish([*GPUS[:2], Device("gpu-2", healthy=False, reason="disabled by the admin")])
    with Channel(plugin.service_path) as channel:
        request, response = health_v1.NodeWatchResourcesRequest(), health_v1.NodeWatchResourcesResponse
        with channel.server_streaming(paths.DRA_HEALTH_V1_WATCH, request, response) as stream:
            last = next(stream).devices[2]
    assert (last.device.device_name, last.health, last.message) == (
        "gpu-2",
        health_v1.UNHEALTHY,
        "disabled by the admin",
    )
    plugin.set_health("gpu-2", True)
    assert plugin.devices[2].reason is None


# -- CDI -------------------------------------------------------------------------------------


def test_prepared_devices_get_a_cdi_spec_the_cdi_library_resolves(
    plugin: dra.DRAPlugin, api: FakeAPIServer, sock_dir: str
) -> None:
    """One spec per claim, written atomically; its IDs go to the kubelet; Debian's CDI library
    (the one runtimes use) loads it and injects each device's node, mount and env."""
    from interop.cdi_check import load, oci_edits

    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0"), ("gpu", "gpu-2")])
    response = prepare(plugin.service_path, [("default", uid, "c")])
    ids = {d.device_name: list(d.cdi_device_ids) for d in response.claims[uid].devices}
    assert ids == {"gpu-0": [f"k8s.{DRIVER}/claim={uid}-gpu-0"], "gpu-2": []}, "gpu-2 has nothing to inject"
    cdi_dir = os.path.join(sock_dir, "cdi")
    assert os.listdir(cdi_dir) == [f"k8s.{DRIVER}-claim_{uid}.json"]
    report = load(cdi_dir, ids["gpu-0"])
    assert report["errors"] == {}
    edits = oci_edits(report["injected"][ids["gpu-0"][0]]["spec"])
    assert edits["env"] == ["GPU=0"]
    assert [d[0] for d in edits["devices"]] == ["/dev/gpu0"]
    assert [m[:2] for m in edits["mounts"]] == [("/opt/gpu0", "/opt/gpu0")]
    unprepare(plugin.service_path, [("default", uid, "c")])
    assert os.listdir(cdi_dir) == [], "unprepare removes the claim's spec"


def test_a_lost_cdi_spec_is_written_again_when_the_kubelet_repeats_prepare(
    plugin: dra.DRAPlugin, api: FakeAPIServer, sock_dir: str, hooks: Hooks
) -> None:
    """/var/run/cdi is a tmpfs: after a reboot the checkpoint says prepared but the spec is gone."""
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-1")])
    first = prepare(plugin.service_path, [("default", uid, "c")])
    (path,) = [os.path.join(sock_dir, "cdi", n) for n in os.listdir(os.path.join(sock_dir, "cdi"))]
    with open(path) as handle:
        written = json.load(handle)
    os.unlink(path)
    again = prepare(plugin.service_path, [("default", uid, "c")])
    assert again == first and len(hooks.prepared) == 1
    with open(path) as handle:
        assert json.load(handle) == written


def test_without_cdi_only_the_devices_own_cdi_names_are_returned(sock_dir: str, api: FakeAPIServer) -> None:
    devices = [Device("gpu-0", envs={"A": "1"}, cdi_devices=["vendor.com/gpu=0"])]
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    with make_plugin(sock_dir, api, devices=devices, cdi=False) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        response = prepare(p.service_path, [("default", uid, "c")])
    assert [list(d.cdi_device_ids) for d in response.claims[uid].devices] == [["vendor.com/gpu=0"]]
    assert not os.path.exists(os.path.join(sock_dir, "cdi"))


def test_an_unwritable_cdi_directory_fails_the_claim_with_the_reason(
    sock_dir: str, api: FakeAPIServer
) -> None:
    blocker = os.path.join(sock_dir, "not-a-dir")
    open(blocker, "w").close()
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    with make_plugin(sock_dir, api, cdi=os.path.join(blocker, "cdi")) as p:
        wait_until(lambda: os.path.exists(p.socket_path), what="the registration socket")
        response = prepare(p.service_path, [("default", uid, "c")])
        assert (
            "NotADirectoryError" in response.claims[uid].error
            or "FileExistsError" in response.claims[uid].error
        )
        assert p.prepared_claims == [], "a failed claim is not checkpointed: the kubelet's retry prepares it"


def test_a_cdi_spec_that_cannot_be_removed_fails_unprepare_with_a_warning(
    plugin: dra.DRAPlugin, api: FakeAPIServer, sock_dir: str, caplog: Any
) -> None:
    """The kubelet gets the reason and retries; the log says which claim and why, like every refusal."""
    uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    prepare(plugin.service_path, [("default", uid, "c")])
    (name,) = os.listdir(os.path.join(sock_dir, "cdi"))
    path = os.path.join(sock_dir, "cdi", name)
    os.unlink(path)
    os.mkdir(path)  # unlink(2) refuses a directory
    with caplog.at_level(logging.WARNING, logger="sdplite"):
        error = unprepare(plugin.service_path, [("default", uid, "c")]).claims[uid].error
    assert error.startswith("removing its CDI spec:"), error
    assert plugin.prepared_claims == [uid], "kept, so the kubelet's retry can finish it"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"cannot unprepare claim default/c ({uid}): removing its CDI spec" in line for line in lines
    ), lines
    os.rmdir(path)


def test_a_slice_publisher_thread_left_hanging_by_stop_stays_stopped_after_a_restart() -> None:
    """stop() gives up on a hung request at its deadline; a later start() must not revive that
    thread beside the new one (two threads would write the same slices)."""
    import threading

    from sdplite.dra.slices import SlicePublisher
    from sdplite.wire.shutdown import Shutdown

    release = threading.Event()
    hung: list[threading.Thread] = []

    class HangsOnce:
        def get(self, path: str, **query: str) -> Any:
            if not hung:
                hung.append(threading.current_thread())
                release.wait(30)
            return {"metadata": {"uid": "node-uid"}, "items": []}

        def post(self, path: str, body: Any) -> Any:
            return body

    publisher = SlicePublisher(HangsOnce(), "gpu.example.com", "node-a", lambda: [])  # type: ignore[arg-type]
    publisher.start()
    wait_until(lambda: bool(hung))
    publisher.stop(Shutdown(0.1))  # gives up on the hung request
    publisher.start()
    try:
        release.set()
        hung[0].join(10)
        assert not hung[0].is_alive(), "the abandoned thread went on publishing beside the new one"
    finally:
        publisher.stop(Shutdown(5.0))


def test_a_claim_unprepared_between_the_checkpoint_look_and_the_lock_is_read_again(tmp_path: Any) -> None:
    # A rolling update's other instance unprepares the claim after prepare() saw it in the
    # checkpoint and before it took the lock: the claim is read again, and an error says why.
    from sdplite.dra.claims import Checkpoint, ClaimError
    from sdplite.dra.devices import DeviceTable
    from sdplite.dra.driver import Driver

    class VanishingCheckpoint(Checkpoint):
        looks = 0

        def get(self, uid: str) -> Any:
            self.looks += 1
            return object() if self.looks == 1 else None  # prepared at the first look only

    reads: list[str] = []

    def read_claim(namespace: str, name: str) -> Any:
        reads.append(name)
        raise ClaimError(f"ResourceClaim {namespace}/{name} is gone")

    checkpoint = VanishingCheckpoint(str(tmp_path / "checkpoint.json"))
    driver = Driver(DRIVER, DeviceTable(DRIVER, pool=NODE), checkpoint, read_claim=read_claim)
    result = driver.prepare([("default", "uid-1", "claim-1")])
    assert reads == ["claim-1"]
    assert result == {"uid-1": "ResourceClaim default/claim-1 is gone"}
