"""The DRA example in deploy/dra/: schema-valid, and RBAC with exactly the verbs the driver uses."""

from __future__ import annotations

import glob
import os
from typing import Any

import pytest
import yaml
from dra_support import DRIVER, GPUS, api_server, make_plugin
from test_deploy import manifests as deploy_manifests
from test_deploy import typed as typed_as

from sdplite import Device
from sdplite.api import dra_v1_pb2 as v1
from sdplite.api import paths
from sdplite.wire import Channel

from conftest import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "dra")
MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("resource.k8s.io/v1", "DeviceClass"): "V1DeviceClass",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}
#: A request path's resource: (API group, resource).
RESOURCES = {
    "/api/v1/nodes/": ("", "nodes"),
    "/apis/resource.k8s.io/v1/resourceslices": ("resource.k8s.io", "resourceslices"),
}


def manifests() -> list[dict[str, Any]]:
    return deploy_manifests(DEPLOY)


def typed(document: dict[str, Any]) -> Any:
    return typed_as(document, MODELS)


def one(kind: str) -> Any:
    (found,) = [typed(d) for d in manifests() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("document", manifests(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_manifests_match_the_api_schema(document: dict[str, Any]) -> None:
    typed(document)


def test_kustomization_lists_every_manifest() -> None:
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as handle:
        listed = set(yaml.safe_load(handle)["resources"])
    assert listed == {os.path.basename(p) for p in glob.glob(os.path.join(DEPLOY, "*.yaml"))} - {
        "kustomization.yaml"
    }


def verb(method: str, path: str) -> tuple[str, str, str]:
    """(group, resource, verb) the API server's authorizer sees for one request."""
    if "/resourceclaims/" in path:
        return ("resource.k8s.io", "resourceclaims", "get")
    for prefix, (group, resource) in RESOURCES.items():
        if path.startswith(prefix):
            item = path != prefix.rstrip("/")
            verbs = {"GET": "get" if item else "list", "POST": "create", "PUT": "update", "DELETE": "delete"}
            return (group, resource, verbs[method])
    raise AssertionError(f"unexpected request {method} {path}")


def test_the_cluster_role_grants_exactly_what_the_driver_uses(sock_dir: str) -> None:
    """A driver's whole life against the test API server: publish, grow, shrink, prepare a claim."""
    api = api_server()
    try:
        with make_plugin(sock_dir, api) as plugin:
            assert plugin.wait_published(10)
            plugin.publish([Device(f"dev-{i}") for i in range(200)])
            wait_until(lambda: len(api.slices) == 2, 20, "two slices")
            plugin.publish(GPUS)
            wait_until(lambda: len(api.slices) == 1, 20, "one slice again")
            uid = api.add_claim("default", "c", DRIVER, [("gpu", "gpu-0")])
            wait_until(lambda: os.path.exists(plugin.service_path), what="the service socket")
            with Channel(plugin.service_path) as channel:
                request = v1.NodePrepareResourcesRequest(
                    claims=[v1.Claim(namespace="default", uid=uid, name="c")]
                )
                channel.unary(paths.DRA_V1_PREPARE, request, v1.NodePrepareResourcesResponse)
        used = {verb(r.method, r.path) for r in api.requests}
    finally:
        api.stop()
    granted = {
        (group, resource, v)
        for rule in one("ClusterRole").rules
        for group in rule.api_groups
        for resource in rule.resources
        for v in rule.verbs
    }
    assert granted == used


def test_the_daemonset_runs_as_the_service_account_with_what_the_kubelet_needs() -> None:
    daemonset, account, binding = one("DaemonSet"), one("ServiceAccount"), one("ClusterRoleBinding")
    pod = daemonset.spec.template.spec
    assert pod.service_account_name == account.metadata.name == binding.subjects[0].name
    assert binding.role_ref.name == one("ClusterRole").metadata.name
    container = pod.containers[0]
    env = {e.name: e.value_from.field_ref.field_path for e in container.env if e.value_from}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_UID": "metadata.uid"}
    volumes = {v.name: v.host_path.path for v in pod.volumes if v.host_path}
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    # Sockets are named to the kubelet by path: inside and outside must agree.
    for name, host in volumes.items():
        assert mounts[name] == host
    assert set(volumes.values()) == {
        paths.PLUGINS_REGISTRY_PATH.rstrip("/"),
        paths.DRA_PLUGINS_PATH + DRIVER,
        "/var/run/cdi",
    }
    security = container.security_context
    assert not security.privileged and security.capabilities.drop == ["ALL"]
    assert container.liveness_probe._exec.command == ["sdplite", "health"]
    assert daemonset.spec.update_strategy.rolling_update.max_surge == 1, "rolling updates overlap two pods"


def test_the_device_class_selects_this_driver() -> None:
    device_class = one("DeviceClass")
    assert device_class.metadata.name == DRIVER
    assert device_class.spec.selectors[0].cel.expression == f'device.driver == "{DRIVER}"'
