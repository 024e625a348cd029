"""A device plugin written with grpcio, the way people write one today: a real peer for our tools."""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from typing import Any, Optional

import grpc

from sdplite.api import deviceplugin_pb2 as pb


def _ser(message: Any) -> bytes:
    return message.SerializeToString()


class GrpcioDevicePlugin:
    """DevicePlugin on grpcio; Allocate gives each device as /dev/<id> and an env var."""

    def __init__(self, path: str, devices: list[str], options: Optional[Any] = None) -> None:
        self.path = path
        self.devices = [pb.Device(ID=d, health="Healthy") for d in devices]
        self.options = options or pb.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )
        self.pre_started: list[list[str]] = []
        self._watchers: list[queue.Queue[Any]] = []
        self._lock = threading.Lock()
        handlers = {
            "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                lambda r, c: self.options, pb.Empty.FromString, _ser
            ),
            "ListAndWatch": grpc.unary_stream_rpc_method_handler(self._watch, pb.Empty.FromString, _ser),
            "Allocate": grpc.unary_unary_rpc_method_handler(
                self._allocate, pb.AllocateRequest.FromString, _ser
            ),
            "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
                self._preferred, pb.PreferredAllocationRequest.FromString, _ser
            ),
            "PreStartContainer": grpc.unary_unary_rpc_method_handler(
                self._pre_start, pb.PreStartContainerRequest.FromString, _ser
            ),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1beta1.DevicePlugin", handlers),)
        )
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()

    def _watch(self, request: Any, context: Any) -> Any:
        items: queue.Queue[Any] = queue.Queue()
        context.add_callback(lambda: items.put(None))
        with self._lock:
            items.put(list(self.devices))
            self._watchers.append(items)
        try:
            while True:
                devices = items.get()
                if devices is None:
                    return
                yield pb.ListAndWatchResponse(devices=devices)
        finally:
            with self._lock:
                self._watchers.remove(items)

    def set_health(self, device_id: str, health: str) -> None:
        with self._lock:
            for device in self.devices:
                if device.ID == device_id:
                    device.health = health
            for watcher in self._watchers:
                watcher.put(list(self.devices))

    def _allocate(self, request: Any, context: Any) -> Any:
        response = pb.AllocateResponse()
        for container in request.container_requests:
            ids = list(container.devices_ids)
            response.container_responses.add(
                envs={"GRPCIO_DEVICES": ",".join(ids)},
                devices=[
                    pb.DeviceSpec(host_path=f"/dev/{i}", container_path=f"/dev/{i}", permissions="rw")
                    for i in ids
                ],
            )
        return response

    def _preferred(self, request: Any, context: Any) -> Any:
        response = pb.PreferredAllocationResponse()
        for container in request.container_requests:
            ordered = sorted(container.available_deviceIDs, reverse=True)
            response.container_responses.add(deviceIDs=ordered[: container.allocation_size])
        return response

    def _pre_start(self, request: Any, context: Any) -> Any:
        self.pre_started.append(list(request.devices_ids))
        return pb.PreStartContainerResponse()

    def register(self, kubelet_socket: str, resource: str, endpoint: str, version: str = "v1beta1") -> None:
        """Call Register like a grpcio plugin does; raises grpc.RpcError if refused."""
        with grpc.insecure_channel(f"unix:{kubelet_socket}") as channel:
            call = channel.unary_unary(
                "/v1beta1.Registration/Register",
                request_serializer=_ser,
                response_deserializer=pb.Empty.FromString,
            )
            call(
                pb.RegisterRequest(
                    version=version, endpoint=endpoint, resource_name=resource, options=self.options
                ),
                timeout=20,
            )

    def stop(self) -> None:
        self.server.stop(0).wait()
