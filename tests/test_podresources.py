"""The pod-resources client against a grpcio PodResourcesLister server: field for field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from sdplite.api import podresources_pb2 as pr
from sdplite.podresources import PodResourcesClient


def _sample() -> tuple[Any, Any]:
    topology = pr.TopologyInfo(nodes=[pr.NUMANode(ID=1)])
    pods = pr.ListPodResourcesResponse(
        pod_resources=[
            pr.PodResources(
                name="trainer",
                namespace="ml",
                containers=[
                    pr.ContainerResources(
                        name="main",
                        devices=[
                            pr.ContainerDevices(
                                resource_name="example.com/gpu",
                                device_ids=["gpu-0", "gpu-1"],
                                topology=topology,
                            ),
                            pr.ContainerDevices(resource_name="example.com/nic", device_ids=["nic-3"]),
                        ],
                        cpu_ids=[2, 3],
                        memory=[
                            pr.ContainerMemory(memory_type="hugepages-1Gi", size=2 << 30, topology=topology)
                        ],
                        dynamic_resources=[
                            pr.DynamicResource(
                                claim_name="c",
                                claim_namespace="ml",
                                claim_resources=[
                                    pr.ClaimResource(cdi_devices=[pr.CDIDevice(name="x.com/y=z")]),
                                    pr.ClaimResource(
                                        driver_name="gpu.example.com",
                                        pool_name="node-1",
                                        device_name="gpu-3",
                                        share_id="6f1e5c3a-share",
                                    ),
                                ],
                            )
                        ],
                    ),
                    pr.ContainerResources(name="sidecar"),
                ],
            ),
            pr.PodResources(name="idle", namespace="default"),
        ]
    )
    allocatable = pr.AllocatableResourcesResponse(
        devices=[
            pr.ContainerDevices(resource_name="example.com/gpu", device_ids=["gpu-0", "gpu-1", "gpu-2"])
        ],
        cpu_ids=[0, 1, 2, 3],
        memory=[pr.ContainerMemory(memory_type="memory", size=64 << 30)],
    )
    return pods, allocatable


@pytest.fixture
def kubelet_pod_resources(sock_dir: str) -> Iterator[tuple[str, Any, Any]]:
    pods, allocatable = _sample()
    path = os.path.join(sock_dir, "kubelet.sock")

    def get(request: Any, context: Any) -> Any:
        for pod in pods.pod_resources:
            if (pod.name, pod.namespace) == (request.pod_name, request.pod_namespace):
                return pr.GetPodResourcesResponse(pod_resources=pod)
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_namespace}/{request.pod_name} not found")

    def ser(message: Any) -> bytes:
        return message.SerializeToString()

    handlers = {
        "List": grpc.unary_unary_rpc_method_handler(
            lambda r, c: pods, pr.ListPodResourcesRequest.FromString, ser
        ),
        "GetAllocatableResources": grpc.unary_unary_rpc_method_handler(
            lambda r, c: allocatable, pr.AllocatableResourcesRequest.FromString, ser
        ),
        "Get": grpc.unary_unary_rpc_method_handler(get, pr.GetPodResourcesRequest.FromString, ser),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("v1.PodResourcesLister", handlers),)
    )
    server.add_insecure_port(f"unix:{path}")
    server.start()
    yield path, pods, allocatable
    server.stop(0).wait()


def test_client_returns_what_the_server_serves_field_for_field(kubelet_pod_resources: Any) -> None:
    path, pods, allocatable = kubelet_pod_resources
    with PodResourcesClient(path) as client:
        assert client.list() == pods
        assert client.get_allocatable_resources() == allocatable
        assert client.get("trainer", "ml") == pods.pod_resources[0]


def test_which_container_got_which_device(kubelet_pod_resources: Any) -> None:
    path, _, _ = kubelet_pod_resources
    with PodResourcesClient(path) as client:
        assert client.devices_by_container("example.com/gpu") == {
            ("ml", "trainer", "main"): ["gpu-0", "gpu-1"]
        }
        assert client.devices_by_container() == {("ml", "trainer", "main"): ["gpu-0", "gpu-1", "nic-3"]}
        assert client.owner_of("example.com/gpu", "gpu-1") == ("ml", "trainer", "main")
        assert client.owner_of("example.com/gpu", "gpu-2") is None


def test_get_of_an_unknown_pod_is_not_found(kubelet_pod_resources: Any) -> None:
    from sdplite.wire import GrpcError, StatusCode

    path, _, _ = kubelet_pod_resources
    with PodResourcesClient(path) as client:
        with pytest.raises(GrpcError) as info:
            client.get("nope", "ml")
    assert info.value.code == StatusCode.NOT_FOUND and "ml/nope" in info.value.message


def test_inspect_pod_resources(kubelet_pod_resources: Any) -> None:
    path, _, _ = kubelet_pod_resources
    result = subprocess.run(
        [sys.executable, "-m", "sdplite", "inspect", "--pod-resources", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "ml/trainer/main: example.com/gpu gpu-0, gpu-1" in result.stdout
    assert "example.com/gpu: gpu-0, gpu-1, gpu-2" in result.stdout
    assert "ml/trainer/main: claim ml/c: cdi x.com/y=z" in result.stdout
    assert "ml/trainer/main: claim ml/c: gpu.example.com node-1/gpu-3 share 6f1e5c3a-share" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "sdplite", "inspect", "--pod-resources", path, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    first = json.loads(result.stdout.splitlines()[0])
    assert first["pod_resources"]["pod_resources"][0]["name"] == "trainer"
    claims = first["pod_resources"]["pod_resources"][0]["containers"][0]["dynamic_resources"][0]
    assert [c.get("share_id") for c in claims["claim_resources"]] == [None, "6f1e5c3a-share"]


def test_share_id_is_optional_with_presence() -> None:
    """ClaimResource.share_id (field 5, Kubernetes 1.35) tells unset from empty, and older peers skip it."""
    unset = pr.ClaimResource(device_name="gpu-3")
    assert not unset.HasField("share_id")
    empty = pr.ClaimResource(device_name="gpu-3", share_id="")
    assert empty.HasField("share_id") and empty.SerializeToString() != unset.SerializeToString()
    shared = pr.ClaimResource(device_name="gpu-3", share_id="s-1")
    assert shared.SerializeToString() == bytes.fromhex("2205") + b"gpu-3" + bytes.fromhex("2a03") + b"s-1"
