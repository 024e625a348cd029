"""A kubelet stand-in built on grpcio: a real gRPC peer that we did not write.

It does what docs/design.md ("Kubelet facts the code relies on") describes: serves Registration on
``kubelet.sock``, validates the version and resource name with the kubelet's
messages, dials the plugin back (authority ``localhost``, 10 s, blocking),
calls GetDevicePluginOptions inside Register, then holds ListAndWatch open
and keeps each resource's devices. ``restart()`` does what a kubelet restart
does to the device-plugins directory.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import grpc

from sdplite.api import deviceplugin_pb2 as pb
from sdplite.testing.emulator import cleanup_plugin_directory

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's IsExtendedResourceName, written again from its rules (not sdplite's)."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    qualified = "requests." + name
    parts = qualified.split("/")
    if len(parts) != 2:
        return False
    prefix, short = parts
    return (
        0 < len(prefix) <= 253
        and bool(_SUBDOMAIN.match(prefix))
        and 0 < len(short) <= 63
        and bool(_NAME.match(short))
    )


def _ser(message: Any) -> bytes:
    return message.SerializeToString()


@dataclass
class Endpoint:
    """One registration: the dialled-back plugin and what it reported."""

    resource: str
    endpoint: str
    options: Any
    channel: grpc.Channel
    lists: list[list[Any]] = field(default_factory=list)
    stream_ended: Optional[str] = None

    def stub(self, method: str, request_type: Any, response_type: Any) -> Any:
        return self.channel.unary_unary(
            f"/v1beta1.DevicePlugin/{method}",
            request_serializer=_ser,
            response_deserializer=response_type.FromString,
        )

    @property
    def devices(self) -> list[Any]:
        return self.lists[-1] if self.lists else []


class GrpcioKubelet:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "kubelet.sock")
        self.cond = threading.Condition()
        self.endpoints: dict[str, Endpoint] = {}
        self.registrations: list[Any] = []  # every RegisterRequest that succeeded
        self.refusals: list[str] = []
        #: When set, every Register is refused with this message (as UNKNOWN).
        self.refuse_with: Optional[str] = None
        self._server: Optional[grpc.Server] = None
        self._readers: list[threading.Thread] = []
        self.start()

    # -- the Registration service --------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.unary_unary_rpc_method_handler(
            self._register, request_deserializer=pb.RegisterRequest.FromString, response_serializer=_ser
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1beta1.Registration", {"Register": handler}),)
        )
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def _refuse(self, context: Any, message: str) -> None:
        with self.cond:
            self.refusals.append(message)
            self.cond.notify_all()
        context.abort(grpc.StatusCode.UNKNOWN, message)

    def _register(self, request: Any, context: Any) -> Any:
        if self.refuse_with:
            self._refuse(context, self.refuse_with)
        if request.version != "v1beta1":
            self._refuse(
                context,
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["v1beta1"]',
            )
        if not is_extended_resource_name(request.resource_name):
            self._refuse(context, f'the ResourceName "{request.resource_name}" is invalid')
        target = os.path.join(self.directory, request.endpoint)
        channel = grpc.insecure_channel(
            f"unix:{target}",
            options=[("grpc.default_authority", "localhost"), ("grpc.use_local_subchannel_pool", 1)],
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            channel.close()
            self._refuse(context, "failed to dial device plugin: context deadline exceeded")
        get_options = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetDevicePluginOptions",
            request_serializer=_ser,
            response_deserializer=pb.DevicePluginOptions.FromString,
        )
        try:
            options = get_options(pb.Empty())
        except grpc.RpcError as exc:
            channel.close()
            self._refuse(context, f"failed to get device plugin options: {exc.details()}")
        endpoint = Endpoint(request.resource_name, request.endpoint, options, channel)
        with self.cond:
            old = self.endpoints.get(request.resource_name)
            self.endpoints[request.resource_name] = endpoint
            self.registrations.append(request)
            self.cond.notify_all()
        if old is not None:
            old.channel.close()  # newest registration wins, as in the kubelet
        reader = threading.Thread(target=self._list_and_watch, args=(endpoint,), daemon=True)
        self._readers.append(reader)
        reader.start()
        return pb.Empty()

    def _list_and_watch(self, endpoint: Endpoint) -> None:
        stream = endpoint.channel.unary_stream(
            "/v1beta1.DevicePlugin/ListAndWatch",
            request_serializer=_ser,
            response_deserializer=pb.ListAndWatchResponse.FromString,
        )
        reason = "ended with OK"
        try:
            for response in stream(pb.Empty()):
                with self.cond:
                    endpoint.lists.append(list(response.devices))
                    self.cond.notify_all()
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except ValueError:  # the channel was closed under us
            reason = "channel closed"
        with self.cond:
            endpoint.stream_ended = reason
            self.cond.notify_all()

    # -- what the kubelet does at pod admission ------------------------------------

    def endpoint(self, resource: str) -> Endpoint:
        with self.cond:
            return self.endpoints[resource]

    def allocate(self, resource: str, *containers: list[str]) -> Any:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
        )
        return self.endpoint(resource).stub("Allocate", pb.AllocateRequest, pb.AllocateResponse)(request)

    def preferred(self, resource: str, available: list[str], must: list[str], size: int) -> Any:
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
                )
            ]
        )
        call = self.endpoint(resource).stub(
            "GetPreferredAllocation", pb.PreferredAllocationRequest, pb.PreferredAllocationResponse
        )
        return call(request)

    def pre_start(self, resource: str, ids: list[str], timeout: float = 30.0) -> Any:
        call = self.endpoint(resource).stub(
            "PreStartContainer", pb.PreStartContainerRequest, pb.PreStartContainerResponse
        )
        return call(pb.PreStartContainerRequest(devices_ids=ids), timeout=timeout)

    # -- waiting -------------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(
                    f"kubelet stand-in: timed out after {timeout}s waiting for {what} ({self._summary()})"
                )

    def _summary(self) -> str:
        """What the stand-in has seen so far, for a failure message (lock held)."""
        registered = [r.resource_name for r in self.registrations]
        streams = {
            name: f"{len(e.lists)} lists, last {[(d.ID, d.health) for d in e.devices]}, "
            f"ended: {e.stream_ended}"
            for name, e in self.endpoints.items()
        }
        return f"registrations {registered}, refusals {self.refusals}, streams {streams}"

    def wait_for_registration(self, resource: str, count: int = 1, timeout: float = 20.0) -> Endpoint:
        self.wait(
            lambda: sum(r.resource_name == resource for r in self.registrations) >= count,
            timeout,
            f"registration #{count} of {resource}",
        )
        return self.endpoint(resource)

    def wait_for_devices(
        self, resource: str, predicate: Callable[[list[Any]], bool], timeout: float = 20.0
    ) -> list[Any]:
        def ok() -> bool:
            endpoint = self.endpoints.get(resource)
            return endpoint is not None and bool(endpoint.lists) and predicate(endpoint.devices)

        self.wait(ok, timeout, f"a device list of {resource} that matches")
        return self.endpoint(resource).devices

    # -- restarts ------------------------------------------------------------------

    def stop(self) -> None:
        """What a stopping kubelet does: drop every plugin connection, stop serving."""
        with self.cond:
            endpoints = list(self.endpoints.values())
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

    def restart(self, down_for: float = 0.0) -> None:
        """A kubelet restart: stop, wipe the plugin sockets, serve a fresh kubelet.sock."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.cleanup_directory()
        self.start()
