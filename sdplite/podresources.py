"""A typed client for the kubelet's pod-resources API (``v1.PodResourcesLister``).

Allocate does not say which pod a device went to; the kubelet's
pod-resources socket does. From a plugin::

    with PodResourcesClient() as client:
        for (namespace, pod, container), ids in client.devices_by_container("example.com/gpu").items():
            ...
"""

from __future__ import annotations

import builtins
from typing import Optional

from .api import paths
from .api import podresources_pb2 as pr
from .wire import Channel

__all__ = ["PodResourcesClient", "ContainerKey"]

#: (namespace, pod name, container name)
ContainerKey = tuple[str, str, str]


class PodResourcesClient:
    """One connection to ``/var/lib/kubelet/pod-resources/kubelet.sock`` (or ``socket``)."""

    def __init__(self, socket: str = paths.POD_RESOURCES_SOCKET, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._channel = Channel(socket, connect_timeout=timeout)

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def list(self) -> pr.ListPodResourcesResponse:
        """Every pod on the node with the devices, CPUs and memory of its containers."""
        return self._channel.unary(
            paths.POD_RESOURCES_LIST,
            pr.ListPodResourcesRequest(),
            pr.ListPodResourcesResponse,
            timeout=self.timeout,
        )

    def get_allocatable_resources(self) -> pr.AllocatableResourcesResponse:
        """What the node can hand out: devices reported healthy, CPUs, memory."""
        return self._channel.unary(
            paths.POD_RESOURCES_GET_ALLOCATABLE,
            pr.AllocatableResourcesRequest(),
            pr.AllocatableResourcesResponse,
            timeout=self.timeout,
        )

    def get(self, pod_name: str, namespace: str = "default") -> pr.PodResources:
        """One pod's resources (kubelet feature gate KubeletPodResourcesGet)."""
        response = self._channel.unary(
            paths.POD_RESOURCES_GET,
            pr.GetPodResourcesRequest(pod_name=pod_name, pod_namespace=namespace),
            pr.GetPodResourcesResponse,
            timeout=self.timeout,
        )
        return response.pod_resources

    def devices_by_container(
        self, resource_name: Optional[str] = None
    ) -> dict[ContainerKey, builtins.list[str]]:
        """Device IDs per container, for one resource or all of them."""
        result: dict[ContainerKey, builtins.list[str]] = {}
        for pod in self.list().pod_resources:
            for container in pod.containers:
                ids = [
                    device_id
                    for devices in container.devices
                    if resource_name is None or devices.resource_name == resource_name
                    for device_id in devices.device_ids
                ]
                if ids:
                    result[(pod.namespace, pod.name, container.name)] = ids
        return result

    def owner_of(self, resource_name: str, device_id: str) -> Optional[ContainerKey]:
        """The container a device is allocated to, if any."""
        for key, ids in self.devices_by_container(resource_name).items():
            if device_id in ids:
                return key
        return None
