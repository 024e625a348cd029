"""The benchmark device plugin written with grpcio, the way such plugins are usually written.

A ``grpc.server`` with a ``ThreadPoolExecutor(max_workers=10)`` and generic
method handlers over the generated messages; ListAndWatch is a generator
fed by a queue per watcher. Kubelet restarts are handled as a typical
Python plugin does: the main thread polls every ``--poll`` seconds
(default 0.1 s, the most favourable end of the usual 0.1-1 s) whether our
socket still exists; when it is gone it starts a new server and registers
again, and a failed Register is retried at the next poll.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from concurrent import futures
from typing import Any, Optional

import common
import grpc

pb = common.load_deviceplugin_pb2()


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class GrpcioPlugin:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.path = os.path.join(args.dir, args.socket)
        self.kubelet_socket = os.path.join(args.dir, "kubelet.sock")
        ids = common.device_ids(args.devices)
        self.healthy = dict.fromkeys(ids, True)
        self.devices = common.protobuf_devices(pb, ids)
        self.options = pb.DevicePluginOptions()
        self.lock = threading.Lock()
        self.watchers: list[queue.Queue[Optional[bool]]] = []
        self.server: Optional[grpc.Server] = None

    # -- the DevicePlugin service ------------------------------------------------

    def get_options(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.options

    def list_and_watch(self, request: Any, context: grpc.ServicerContext) -> Any:
        changes: queue.Queue[Optional[bool]] = queue.Queue()
        context.add_callback(lambda: changes.put(None))
        with self.lock:
            self.watchers.append(changes)
        try:
            while True:
                with self.lock:
                    response = pb.ListAndWatchResponse(devices=self.devices)
                yield response
                if changes.get() is None:
                    return
        finally:
            with self.lock:
                self.watchers.remove(changes)

    def allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = pb.AllocateResponse()
        for container in request.container_requests:
            ids = list(container.devices_ids)
            problem = common.check_allocatable(self.healthy, ids)
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            common.add_container_allocation(pb, response, ids)
        return response

    def pre_start(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.PreStartContainerResponse()

    def set_health(self, index: int, healthy: bool) -> float:
        started = time.monotonic()
        with self.lock:
            device = self.devices[index]
            self.healthy[device.ID] = healthy
            device.health = common.HEALTHY if healthy else common.UNHEALTHY
            for watcher in self.watchers:
                watcher.put(True)
        return started

    # -- serving and registering -------------------------------------------------

    def serve(self) -> None:
        handlers = {
            "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                self.get_options, pb.Empty.FromString, _serialize
            ),
            "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                self.list_and_watch, pb.Empty.FromString, _serialize
            ),
            "Allocate": grpc.unary_unary_rpc_method_handler(
                self.allocate, pb.AllocateRequest.FromString, _serialize
            ),
            "PreStartContainer": grpc.unary_unary_rpc_method_handler(
                self.pre_start, pb.PreStartContainerRequest.FromString, _serialize
            ),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1beta1.DevicePlugin", handlers),)
        )
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    def register(self) -> bool:
        request = pb.RegisterRequest(
            version="v1beta1",
            endpoint=self.args.socket,
            resource_name=self.args.resource,
            options=self.options,
        )
        try:
            with grpc.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
                call = channel.unary_unary(
                    common.REGISTER, request_serializer=_serialize, response_deserializer=pb.Empty.FromString
                )
                call(request, timeout=common.REGISTER_TIMEOUT)
        except grpc.RpcError:
            return False
        return True


def main() -> None:
    args = common.parse_args()
    plugin = GrpcioPlugin(args)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    common.Control(plugin.set_health).start()
    plugin.serve()
    registered = plugin.register()
    while not stopping.wait(args.poll):
        if not os.path.exists(plugin.path):  # the kubelet restarted and wiped our socket
            plugin.stop()
            plugin.serve()
            registered = False
        if not registered:
            registered = plugin.register()
    plugin.stop()


if __name__ == "__main__":
    main()
