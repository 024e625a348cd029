"""The kubelet stand-in and client every plugin is measured against: one grpcio process, the harness.

It does what the kubelet does (docs/design.md, "Kubelet facts the code relies on"): serves Registration on
``kubelet.sock``; inside Register dials the plugin back (authority
``localhost``, waits until ready) and calls GetDevicePluginOptions; then
holds ListAndWatch open on a thread. Allocate calls go through the same
channel, as raw bytes (no serializer) so the client spends as little CPU
as it can and exactly the same for every plugin. ``restart()`` does to the
directory what a kubelet restart does.

Every arrival is stamped with ``time.monotonic()`` (CLOCK_MONOTONIC, one
clock for all processes on the machine) before anything is parsed.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import grpc

from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import paths
from sdplite.testing.emulator import cleanup_plugin_directory

REGISTER_SERVICE = "v1beta1.Registration"
LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"
ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
GET_OPTIONS = "/v1beta1.DevicePlugin/GetDevicePluginOptions"
#: Lists longer than this are only counted, not kept device by device.
KEEP_HEALTH_UP_TO = 1000


@dataclass
class Registration:
    arrived: float
    resource: str
    endpoint: str


@dataclass
class ListMessage:
    """One ListAndWatch message as received."""

    arrived: float
    size: int
    count: int
    ids: Optional[list[str]]
    healthy: Optional[list[bool]]


@dataclass
class Endpoint:
    """One registration's connection back to the plugin, and what its stream brought."""

    channel: grpc.Channel
    stream_opened: float = 0.0
    messages: list[ListMessage] = field(default_factory=list)
    stream_ended: Optional[str] = None

    def unary(self, path: str) -> Callable[..., bytes]:
        """A raw-bytes unary stub: requests are serialised once, responses are not parsed."""
        return self.channel.unary_unary(path)  # type: ignore[no-any-return]


class Kubelet:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "kubelet.sock")
        self.cond = threading.Condition()
        self.registrations: list[Registration] = []
        self.endpoints: list[Endpoint] = []
        self._server: Optional[grpc.Server] = None
        self._readers: list[threading.Thread] = []
        os.makedirs(directory, mode=0o750, exist_ok=True)
        # The kubelet's own file: a plugin that wipes the directory must leave it.
        with open(os.path.join(directory, paths.CHECKPOINT_FILE), "a"):
            pass
        self.start()

    # -- Registration --------------------------------------------------------------

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._register,
            request_deserializer=pb.RegisterRequest.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(REGISTER_SERVICE, {"Register": handler}),)
        )
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def _register(self, request: Any, context: grpc.ServicerContext) -> Any:
        arrived = time.monotonic()
        with self.cond:
            self.registrations.append(Registration(arrived, request.resource_name, request.endpoint))
            self.cond.notify_all()
        channel = grpc.insecure_channel(
            f"unix:{os.path.join(self.directory, request.endpoint)}",
            options=[("grpc.default_authority", "localhost"), ("grpc.use_local_subchannel_pool", 1)],
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            channel.unary_unary(GET_OPTIONS)(b"", timeout=10)
        except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
            channel.close()
            context.abort(grpc.StatusCode.UNKNOWN, f"failed to reach the device plugin: {exc}")
        endpoint = Endpoint(channel)
        with self.cond:
            self.endpoints.append(endpoint)
            self.cond.notify_all()
        reader = threading.Thread(target=self._list_and_watch, args=(endpoint,), daemon=True)
        self._readers.append(reader)
        reader.start()
        return pb.Empty()

    def _list_and_watch(self, endpoint: Endpoint) -> None:
        call = endpoint.channel.unary_stream(LIST_AND_WATCH)
        reason = "ended with OK"
        endpoint.stream_opened = time.monotonic()
        try:
            for raw in call(b""):
                arrived = time.monotonic()
                message = pb.ListAndWatchResponse.FromString(raw)
                devices = message.devices
                keep = len(devices) <= KEEP_HEALTH_UP_TO
                with self.cond:
                    endpoint.messages.append(
                        ListMessage(
                            arrived,
                            len(raw),
                            len(devices),
                            [d.ID for d in devices] if keep else None,
                            [d.health == "Healthy" for d in devices] if keep else None,
                        )
                    )
                    self.cond.notify_all()
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except ValueError:  # the channel was closed under us
            reason = "channel closed"
        with self.cond:
            endpoint.stream_ended = reason
            self.cond.notify_all()

    # -- waiting ---------------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise TimeoutError(f"kubelet stand-in: no {what} within {timeout:.0f}s")

    def wait_registration(self, count: int, timeout: float = 30.0) -> Registration:
        self.wait(lambda: len(self.registrations) >= count, timeout, f"registration #{count}")
        return self.registrations[count - 1]

    def wait_endpoint(self, count: int, timeout: float = 30.0) -> Endpoint:
        self.wait(lambda: len(self.endpoints) >= count, timeout, f"endpoint #{count}")
        return self.endpoints[count - 1]

    def wait_message(self, endpoint: Endpoint, count: int, timeout: float = 30.0) -> ListMessage:
        self.wait(lambda: len(endpoint.messages) >= count, timeout, f"ListAndWatch message #{count}")
        return endpoint.messages[count - 1]

    # -- restarts --------------------------------------------------------------------

    def stop(self) -> None:
        """A stopping kubelet: every plugin connection dropped, Registration no longer served."""
        with self.cond:
            endpoints = list(self.endpoints)
        for endpoint in endpoints:
            endpoint.channel.close()
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        for reader in self._readers:
            reader.join(10)
        self._readers.clear()

    def cleanup_directory(self) -> None:
        """The kubelet's CleanupPluginDirectory: every socket goes but the checkpoint."""
        cleanup_plugin_directory(self.directory)

    def restart(self) -> float:
        """Stop, wipe the sockets, serve a fresh kubelet.sock; returns the time of the wipe."""
        self.stop()
        wiped = time.monotonic()
        self.cleanup_directory()
        self.start()
        return wiped
