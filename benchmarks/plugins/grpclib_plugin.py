"""The benchmark device plugin written with grpclib: asyncio, pure-Python gRPC on h2.

No generated stubs: the service object maps method paths to
``grpclib.const.Handler`` entries in ``__mapping__``, which is what
grpclib's code generator would write. Everything runs on one event loop;
the harness's control thread hands health changes to it with
``run_coroutine_threadsafe``, and the time is taken on the loop, where the
plugin's own code starts publishing. Kubelet restarts: a task polls every
``--poll`` seconds (default 0.1 s) whether our socket still exists, then
serves again and registers, retrying a failed Register at the next poll.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Optional

import common
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

pb = common.load_deviceplugin_pb2()


class GrpclibPlugin:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.path = os.path.join(args.dir, args.socket)
        self.kubelet_socket = os.path.join(args.dir, "kubelet.sock")
        ids = common.device_ids(args.devices)
        self.healthy = dict.fromkeys(ids, True)
        self.devices = common.protobuf_devices(pb, ids)
        self.options = pb.DevicePluginOptions()
        self.watchers: set[asyncio.Queue[bool]] = set()
        self.server: Optional[Server] = None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            common.GET_DEVICE_PLUGIN_OPTIONS: Handler(
                self.get_options, Cardinality.UNARY_UNARY, pb.Empty, pb.DevicePluginOptions
            ),
            common.LIST_AND_WATCH: Handler(
                self.list_and_watch, Cardinality.UNARY_STREAM, pb.Empty, pb.ListAndWatchResponse
            ),
            common.ALLOCATE: Handler(
                self.allocate, Cardinality.UNARY_UNARY, pb.AllocateRequest, pb.AllocateResponse
            ),
            common.PRE_START_CONTAINER: Handler(
                self.pre_start,
                Cardinality.UNARY_UNARY,
                pb.PreStartContainerRequest,
                pb.PreStartContainerResponse,
            ),
        }

    # -- the DevicePlugin service ------------------------------------------------

    async def get_options(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(self.options)

    async def list_and_watch(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        changes: asyncio.Queue[bool] = asyncio.Queue()
        self.watchers.add(changes)
        try:
            while True:
                await stream.send_message(pb.ListAndWatchResponse(devices=self.devices))
                await changes.get()
        finally:
            self.watchers.discard(changes)

    async def allocate(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        response = pb.AllocateResponse()
        for container in request.container_requests:
            ids = list(container.devices_ids)
            problem = common.check_allocatable(self.healthy, ids)
            if problem:
                raise GRPCError(Status.INVALID_ARGUMENT, problem)
            common.add_container_allocation(pb, response, ids)
        await stream.send_message(response)

    async def pre_start(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.PreStartContainerResponse())

    async def set_health(self, index: int, healthy: bool) -> float:
        started = time.monotonic()
        device = self.devices[index]
        self.healthy[device.ID] = healthy
        device.health = common.HEALTHY if healthy else common.UNHEALTHY
        for watcher in self.watchers:
            watcher.put_nowait(True)
        return started

    # -- serving and registering -------------------------------------------------

    async def serve(self) -> None:
        server = Server([self])
        await server.start(path=self.path)
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def register(self) -> bool:
        request = pb.RegisterRequest(
            version="v1beta1",
            endpoint=self.args.socket,
            resource_name=self.args.resource,
            options=self.options,
        )
        channel = Channel(path=self.kubelet_socket)
        try:
            method = UnaryUnaryMethod(channel, common.REGISTER, pb.RegisterRequest, pb.Empty)
            await method(request, timeout=common.REGISTER_TIMEOUT)
        except (GRPCError, OSError, asyncio.TimeoutError):
            return False
        finally:
            channel.close()
        return True


async def amain() -> None:
    args = common.parse_args()
    plugin = GrpclibPlugin(args)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    def set_health(index: int, healthy: bool) -> float:
        return asyncio.run_coroutine_threadsafe(plugin.set_health(index, healthy), loop).result()

    common.Control(set_health).start()
    await plugin.serve()
    registered = await plugin.register()
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), args.poll)
            break
        except asyncio.TimeoutError:
            pass
        if not os.path.exists(plugin.path):  # the kubelet restarted and wiped our socket
            await plugin.stop()
            await plugin.serve()
            registered = False
        if not registered:
            registered = await plugin.register()
    await plugin.stop()


if __name__ == "__main__":
    asyncio.run(amain())
