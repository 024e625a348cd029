"""Shared pieces of the DRA tests: the API-schema check and a plugin wired to a test API server."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client

from sdplite import Device, DeviceNode, Mount, dra
from sdplite.testing.apiserver import FakeAPIServer

DRIVER = "gpu.example.com"
NODE = "node-1"
MODELS = {"ResourceSlice": "V1ResourceSlice", "ResourceClaim": "ResourceV1ResourceClaim"}

GPUS = [
    Device(
        "gpu-0",
        nodes=[DeviceNode("/dev/null", "/dev/gpu0")],
        mounts=[Mount("/opt/gpu0")],
        envs={"GPU": "0"},
        attributes={"model": "X1", "index": 0, "driverVersion": dra.Version("1.2.3"), "ok": True},
        capacity={"memory": "80Gi"},
    ),
    Device("gpu-1", envs={"GPU": "1"}, attributes={"model": "X1", "index": 1}, capacity={"memory": "80Gi"}),
    Device("gpu-2", healthy=False, attributes={"model": "X1", "index": 2}),
]


def schema_check(kind: str, document: dict[str, Any]) -> None:
    """The object must deserialise into the kubernetes client's model and serialise back unchanged."""
    api = client.ApiClient()
    obj = api._ApiClient__deserialize(document, MODELS[kind])  # the client's own deserialiser
    again = api.sanitize_for_serialization(obj)
    if again != document:
        raise ValueError(f"{kind} has fields the {MODELS[kind]} schema does not know: {again} != {document}")


def api_server() -> FakeAPIServer:
    return FakeAPIServer(nodes=[NODE], validate=schema_check).start()


def make_plugin(directory: str, api: FakeAPIServer, **kwargs: Any) -> dra.DRAPlugin:
    registry = os.path.join(directory, "reg")
    os.makedirs(registry, exist_ok=True)
    options: dict[str, Any] = dict(
        devices=GPUS,
        node_name=NODE,
        kube=dra.KubeClient(api.url, token=api.token),
        registry_dir=registry,
        plugin_dir=os.path.join(directory, "plugins"),
        pod_uid="",
        cdi=os.path.join(directory, "cdi"),
    )
    options.update(kwargs)
    return dra.build(DRIVER, **options)
