"""What sdplite's DRA driver must do with the kubelet's gRPC: the cases a kubelet peer is held to.

The peer plays the kubelet's DRA side (``dra`` mode of tests/interop/go):
its plugin watcher finds our registration socket, GetInfo, picks the first
DRAPlugin version it knows in our order, dials our service socket, notifies;
then it calls NodePrepareResources / NodeUnprepareResources and holds the
DRAResourceHealth stream. ResourceClaims come from the test API server
(sdplite.testing.apiserver), which checks what we write against the
Kubernetes API schema. Collected by tests/test_interop_go.py (the kubelet is
grpc-go; grpc-js has no kubelet role for DRA).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dra_support import DRIVER, NODE, api_server, make_plugin

from sdplite import dra
from sdplite.testing.apiserver import FakeAPIServer

from .peers import DraKubeletPeer, check


@pytest.fixture
def dra_api() -> Iterator[FakeAPIServer]:
    server = api_server()
    yield server
    server.stop()


@pytest.fixture
def dra_kubelet(kind: str, sock_dir: str) -> Iterator[DraKubeletPeer]:
    os.makedirs(os.path.join(sock_dir, "reg"), exist_ok=True)
    peer = DraKubeletPeer(kind, os.path.join(sock_dir, "reg"))
    yield peer
    peer.close()


class Recorder:
    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.unprepared: list[str] = []

    def prepare(self, claim: dra.Claim) -> None:
        if claim.name == "broken":
            raise RuntimeError("the device is wedged")
        self.prepared.append(claim.name)

    def unprepare(self, claim: dra.Claim) -> None:
        self.unprepared.append(claim.name)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def driver(sock_dir: str, dra_api: FakeAPIServer, recorder: Recorder) -> Iterator[dra.DRAPlugin]:
    plugin = make_plugin(sock_dir, dra_api, prepare=recorder.prepare, unprepare=recorder.unprepare).start()
    yield plugin
    plugin.stop()


def devices(reply: dict[str, Any], uid: str) -> list[tuple[list[str], str, str]]:
    entry = reply["claims"][uid]
    assert entry["error"] == "", entry["error"]
    return [(d[0], d[1], d[2]) for d in entry["devices"]]


def states(event: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d[1]: (d[2], d[3]) for d in event["devices"]}


def test_dra_registers_through_the_plugin_watcher(dra_kubelet: DraKubeletPeer, driver: dra.DRAPlugin) -> None:
    """GetInfo names our service socket; the kubelet takes v1 (our first), dials it, opens v1 health."""
    registered = dra_kubelet.wait_registered(DRIVER)
    assert registered["socket"] == driver.socket_path
    assert registered["endpoint"] == registered["dialled"] == driver.service_path
    assert (registered["version"], registered["health"]) == ("v1", "v1")
    assert registered["versions"] == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    notify = dra_kubelet.wait_for("notify", socket=driver.socket_path)
    assert (notify["registered"], notify["code"]) == (True, 0)
    assert driver.wait_registered(10)


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_prepare_and_unprepare_several_claims(
    dra_kubelet: DraKubeletPeer,
    driver: dra.DRAPlugin,
    dra_api: FakeAPIServer,
    recorder: Recorder,
    version: str,
) -> None:
    """One call, four claims: two prepared, one the API server does not know, one whose hook fails."""
    dra_kubelet.wait_registered(DRIVER)
    two = dra_api.add_claim("team-a", "two", DRIVER, [("gpus", "gpu-0"), ("gpus", "gpu-1")])
    one = dra_api.add_claim("team-b", "one", DRIVER, [("gpu", "gpu-1")])
    broken = dra_api.add_claim("team-b", "broken", DRIVER, [("gpu", "gpu-0")])
    claims = [
        ("team-a", two, "two"),
        ("team-b", one, "one"),
        ("team-b", "gone-uid", "gone"),
        ("team-b", broken, "broken"),
    ]
    reply = check(dra_kubelet.prepare(DRIVER, claims, version))
    assert reply["version"] == version
    assert set(reply["claims"]) == {two, one, "gone-uid", broken}
    assert devices(reply, two) == [(["gpus"], NODE, "gpu-0"), (["gpus"], NODE, "gpu-1")]
    assert devices(reply, one) == [(["gpu"], NODE, "gpu-1")]
    # Each device with something to inject has a CDI ID of a spec written for this claim.
    assert [d[3] for d in reply["claims"][two]["devices"]] == [
        [f"k8s.{DRIVER}/claim={two}-gpu-0"],
        [f"k8s.{DRIVER}/claim={two}-gpu-1"],
    ]
    assert "not found" in reply["claims"]["gone-uid"]["error"]
    assert reply["claims"][broken]["error"] == "RuntimeError: the device is wedged"
    # The kubelet retries the pod: the prepared claims are sent again and answered the same.
    again = check(dra_kubelet.prepare(DRIVER, claims, version))
    assert devices(again, two) == devices(reply, two)
    assert sorted(recorder.prepared) == ["one", "two"]
    undone = check(dra_kubelet.unprepare(DRIVER, claims, version))
    assert undone["claims"] == {two: "", one: "", "gone-uid": "", broken: ""}
    assert sorted(recorder.unprepared) == ["one", "two"]


def test_an_older_kubelet_takes_v1beta1_and_v1alpha1_health(
    kind: str, sock_dir: str, driver: dra.DRAPlugin, dra_api: FakeAPIServer
) -> None:
    """A 1.33-style kubelet knows only v1beta1.DRAPlugin and v1alpha1 health: it skips our first
    entry, takes the one it knows, and prepares and watches on those paths."""
    old = DraKubeletPeer(kind, os.path.join(sock_dir, "reg"), known="v1beta1.DRAPlugin", health="v1alpha1")
    try:
        registered = old.wait_registered(DRIVER)
        assert (registered["version"], registered["health"]) == ("v1beta1", "v1alpha1")
        uid = dra_api.add_claim("default", "c", DRIVER, [("gpu", "gpu-1")])
        reply = check(old.prepare(DRIVER, [("default", uid, "c")]))
        assert reply["version"] == "v1beta1" and devices(reply, uid) == [(["gpu"], NODE, "gpu-1")]
        health = old.wait_health(DRIVER, lambda e: len(e["devices"]) == 3)
        assert health["version"] == "v1alpha1" and states(health)["gpu-2"][0] == "UNHEALTHY"
    finally:
        old.stop()


def test_a_kubelet_without_dra_versions_in_common_refuses_the_driver(
    kind: str, sock_dir: str, driver: dra.DRAPlugin
) -> None:
    """A 1.31-style kubelet (v1alpha4 only) refuses us with its text; we log it and keep serving."""
    peer = DraKubeletPeer(kind, os.path.join(sock_dir, "reg"), known="v1alpha4.DRAPlugin")
    try:
        notify = peer.wait_for("notify", socket=driver.socket_path)
        assert notify["registered"] is False and notify["code"] == 0
        assert "none of services supported by the plugin" in notify["error"]
        assert not peer.find("register")
        assert not driver.registered and driver.error is None
    finally:
        peer.stop()


def test_health_reaches_the_kubelet_with_a_reason(dra_kubelet: DraKubeletPeer, driver: dra.DRAPlugin) -> None:
    dra_kubelet.wait_registered(DRIVER)
    first = dra_kubelet.wait_health(DRIVER, lambda e: len(e["devices"]) == 3)
    assert states(first) == {"gpu-0": ("HEALTHY", ""), "gpu-1": ("HEALTHY", ""), "gpu-2": ("UNHEALTHY", "")}
    assert {d[0] for d in first["devices"]} == {NODE}
    mark = dra_kubelet.mark()
    driver.set_health("gpu-0", False, "temperature 97 C")
    changed = dra_kubelet.wait_health(DRIVER, lambda e: states(e)["gpu-0"][0] == "UNHEALTHY", since=mark)
    assert states(changed)["gpu-0"] == ("UNHEALTHY", "temperature 97 C")


def test_a_driver_without_health_gets_no_health_stream(
    dra_kubelet: DraKubeletPeer, sock_dir: str, dra_api: FakeAPIServer
) -> None:
    with make_plugin(sock_dir, dra_api, health=False):
        registered = dra_kubelet.wait_registered(DRIVER)
        assert registered["health"] == ""
        check(dra_kubelet.prepare(DRIVER, []))
    assert not dra_kubelet.find("health")


def test_kubelet_restart(
    kind: str, sock_dir: str, driver: dra.DRAPlugin, dra_api: FakeAPIServer, recorder: Recorder
) -> None:
    """The kubelet goes away and comes back: it registers the same socket again, re-sends Prepare for
    claims it had prepared (answered from our checkpoint), and the health stream resumes."""
    registry = os.path.join(sock_dir, "reg")
    uid = dra_api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
    first = DraKubeletPeer(kind, registry)
    try:
        first.wait_registered(DRIVER)
        before = check(first.prepare(DRIVER, [("default", uid, "c")]))
        first.wait_health(DRIVER, lambda e: True)
    finally:
        first.stop()
    assert os.path.exists(driver.socket_path), "a kubelet restart leaves plugins_registry alone"
    second = DraKubeletPeer(kind, registry)
    try:
        again = second.wait_registered(DRIVER)
        assert again["endpoint"] == driver.service_path
        after = check(second.prepare(DRIVER, [("default", uid, "c")]))
        assert devices(after, uid) == devices(before, uid)
        assert recorder.prepared == ["c"], "prepared once, whatever the kubelet repeats"
        second.wait_health(DRIVER, lambda e: len(e["devices"]) == 3)
        assert check(second.unprepare(DRIVER, [("default", uid, "c")]))["claims"] == {uid: ""}
    finally:
        second.stop()


def test_plugin_restart_deregisters_then_registers_again(
    dra_kubelet: DraKubeletPeer, driver: dra.DRAPlugin
) -> None:
    dra_kubelet.wait_registered(DRIVER)
    mark = dra_kubelet.mark()
    driver.restart("test")
    dra_kubelet.wait_for("deregister", mark, socket=driver.socket_path)
    dra_kubelet.wait_registered(DRIVER, since=mark)
    dra_kubelet.wait_for("health_end", mark)
    check(dra_kubelet.prepare(DRIVER, []))


def test_rolling_update_keeps_both_instances_registered(
    dra_kubelet: DraKubeletPeer, sock_dir: str, dra_api: FakeAPIServer
) -> None:
    """Two pods of one driver at once: each has its own sockets; the old one leaving deregisters only
    itself, and calls go to the newer one."""
    old_hooks, new_hooks = Recorder(), Recorder()
    old = make_plugin(sock_dir, dra_api, pod_uid="pod-old", prepare=old_hooks.prepare).start()
    try:
        dra_kubelet.wait_registered(DRIVER)
        early = dra_api.add_claim("default", "early", DRIVER, [("gpu", "gpu-0")])
        check(dra_kubelet.prepare(DRIVER, [("default", early, "early")]))
        new = make_plugin(sock_dir, dra_api, pod_uid="pod-new", prepare=new_hooks.prepare).start()
        try:
            second = dra_kubelet.wait_registered(DRIVER, number=2)
            assert second["endpoint"] == new.service_path != old.service_path
            mark = dra_kubelet.mark()
            old.stop()
            gone = dra_kubelet.wait_for("deregister", mark)
            assert gone["socket"] == old.socket_path
            uid = dra_api.add_claim("default", "c", DRIVER, [("gpu", "gpu-1")])
            assert devices(check(dra_kubelet.prepare(DRIVER, [("default", uid, "c")])), uid) == [
                (["gpu"], NODE, "gpu-1")
            ]
            # The two share the checkpoint: the new instance knows what the old one prepared.
            again = check(dra_kubelet.prepare(DRIVER, [("default", early, "early")]))
            assert devices(again, early) == [(["gpu"], NODE, "gpu-0")]
            assert (old_hooks.prepared, new_hooks.prepared) == (["early"], ["c"])
            assert sorted(new.prepared_claims) == sorted([uid, early])
            assert os.path.exists(new.socket_path) and os.path.exists(new.service_path)
        finally:
            new.stop()
    finally:
        old.stop()
