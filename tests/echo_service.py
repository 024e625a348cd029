"""One small test service, served by sdplite and by grpcio, called by both.

The interop tests run every case against every (client, server) pair, so a
difference between our transport and grpcio shows up as a failing pair.

Methods of ``test.Echo``:
- ``Echo`` (unary, BytesValue): returns the request.
- ``Fail`` (unary, StringValue ``"<code>:<message>"``): fails with that status.
- ``Raise`` (unary, StringValue): the handler raises ValueError(message).
- ``Hang`` (unary, StringValue name): waits until cancelled, then records it.
- ``Watch`` (server-streaming, StringValue name): sends whatever the test
  publishes under that name, until cancelled or ended; a name starting with
  ``greet:`` first gets "hello".
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent import futures
from typing import Any, Callable, Optional

import grpc
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from sdplite.wire import Channel, GrpcError, Method, Server, StatusCode, server_streaming, unary

ECHO = "/test.Echo/Echo"
FAIL = "/test.Echo/Fail"
RAISE = "/test.Echo/Raise"
HANG = "/test.Echo/Hang"
WATCH = "/test.Echo/Watch"

_END = object()


class Hub:
    """Shared state of a test server: open watchers and cancellations seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watchers: dict[str, list[Callable[[Any], None]]] = {}
        self.cancelled: dict[str, threading.Event] = {}
        self.watching: dict[str, threading.Event] = {}

    def event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        with self.lock:
            return table.setdefault(name, threading.Event())

    def subscribe(self, name: str, push: Callable[[Any], None]) -> None:
        with self.lock:
            self.watchers.setdefault(name, []).append(push)
        self.event(self.watching, name).set()

    def unsubscribe(self, name: str, push: Callable[[Any], None]) -> None:
        with self.lock:
            if push in self.watchers.get(name, []):
                self.watchers[name].remove(push)

    def publish(self, name: str, value: str) -> int:
        with self.lock:
            pushes = list(self.watchers.get(name, []))
        for push in pushes:
            push(value)
        return len(pushes)

    def end(self, name: str) -> None:
        with self.lock:
            pushes = self.watchers.pop(name, [])
        for push in pushes:
            push(_END)


def _parse_fail(text: str) -> tuple[StatusCode, str]:
    code, _, message = text.partition(":")
    return StatusCode[code], message


# -- servers -------------------------------------------------------------------


def serve_sdplite(path: str, hub: Hub, **options: Any) -> Server:
    server = Server(path, sdplite_methods(hub), **options)
    server.start()
    return server


def sdplite_methods(hub: Hub) -> list[Method[Any]]:
    """The test service's methods, for a Server or a bare ServerProtocol."""

    def echo(request: BytesValue, context: Any) -> BytesValue:
        return request

    def fail(request: StringValue, context: Any) -> StringValue:
        raise GrpcError(*_parse_fail(request.value))

    def raise_(request: StringValue, context: Any) -> StringValue:
        raise ValueError(request.value)

    def hang(request: StringValue, context: Any) -> StringValue:
        hub.event(hub.watching, request.value).set()
        context.wait_cancelled()
        hub.event(hub.cancelled, request.value).set()
        return request

    def watch(request: StringValue, stream: Any) -> None:
        name = request.value

        def push(value: Any) -> None:
            if value is _END:
                stream.end()
            else:
                stream.send(StringValue(value=value))

        stream.context.add_done_callback(lambda: _watch_done(name, push, stream))
        if name.startswith("greet:"):
            stream.send(StringValue(value="hello"))
        hub.subscribe(name, push)

    def _watch_done(name: str, push: Any, stream: Any) -> None:
        hub.unsubscribe(name, push)
        if stream.context.cancelled():
            hub.event(hub.cancelled, name).set()

    return [
        unary(ECHO, echo, BytesValue),
        unary(FAIL, fail, StringValue),
        unary(RAISE, raise_, StringValue),
        unary(HANG, hang, StringValue),
        server_streaming(WATCH, watch, StringValue),
    ]


class GrpcioServer:
    """The same service on a grpcio server, stopped like ours."""

    def __init__(self, path: str, hub: Hub) -> None:
        def echo(request: BytesValue, context: Any) -> BytesValue:
            return request

        def fail(request: StringValue, context: Any) -> StringValue:
            code, message = _parse_fail(request.value)
            context.abort(getattr(grpc.StatusCode, code.name), message)

        def raise_(request: StringValue, context: Any) -> StringValue:
            raise ValueError(request.value)

        def hang(request: StringValue, context: Any) -> StringValue:
            done = threading.Event()
            context.add_callback(done.set)
            hub.event(hub.watching, request.value).set()
            done.wait()
            hub.event(hub.cancelled, request.value).set()
            return request

        def watch(request: StringValue, context: Any) -> Any:
            name = request.value
            items: queue.Queue[Any] = queue.Queue()
            ended = threading.Event()

            def on_done() -> None:
                # grpcio may close the generator itself on cancel, so note it here.
                if not ended.is_set():
                    hub.event(hub.cancelled, name).set()
                items.put(None)

            context.add_callback(on_done)
            if name.startswith("greet:"):
                items.put("hello")
            hub.subscribe(name, items.put)
            try:
                while True:
                    item = items.get()
                    if item is None:
                        return
                    if item is _END:
                        ended.set()
                        return
                    yield StringValue(value=item)
            finally:
                hub.unsubscribe(name, items.put)

        def handler(fn: Any, req: Any, stream: bool = False) -> Any:
            make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
            return make(
                fn,
                request_deserializer=req.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo",
                    {
                        "Echo": handler(echo, BytesValue),
                        "Fail": handler(fail, StringValue),
                        "Raise": handler(raise_, StringValue),
                        "Hang": handler(hang, StringValue),
                        "Watch": handler(watch, StringValue, stream=True),
                    },
                ),
            )
        )
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()

    def stop(self, grace: Optional[float] = 0) -> None:
        self.server.stop(grace).wait()


# -- clients -------------------------------------------------------------------


class CallError(Exception):
    """A failed call, whichever client made it."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class SdpliteClient:
    name = "sdplite"

    def __init__(self, path: str) -> None:
        self.channel = Channel(path)

    def unary(self, path: str, request: Any, response_type: Any, timeout: Optional[float] = None) -> Any:
        try:
            return self.channel.unary(path, request, response_type, timeout=timeout)
        except GrpcError as exc:
            raise CallError(exc.code, exc.message) from None

    def stream(self, path: str, request: Any, response_type: Any, timeout: Optional[float] = None) -> Any:
        return _SdpliteStream(self.channel.server_streaming(path, request, response_type, timeout=timeout))

    def close(self) -> None:
        self.channel.close()


class _SdpliteStream:
    def __init__(self, call: Any) -> None:
        self.call = call

    def __next__(self) -> Any:
        try:
            return next(self.call)
        except GrpcError as exc:
            raise CallError(exc.code, exc.message) from None

    def cancel(self) -> None:
        self.call.cancel()


class GrpcioClient:
    name = "grpcio"

    def __init__(self, path: str) -> None:
        # A local subchannel pool: each client really is its own connection.
        self.channel = grpc.insecure_channel(f"unix:{path}", options=[("grpc.use_local_subchannel_pool", 1)])

    def unary(self, path: str, request: Any, response_type: Any, timeout: Optional[float] = None) -> Any:
        stub = self.channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        try:
            return stub(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CallError(StatusCode[exc.code().name], exc.details() or "") from None

    def stream(self, path: str, request: Any, response_type: Any, timeout: Optional[float] = None) -> Any:
        stub = self.channel.unary_stream(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return _GrpcioStream(stub(request, timeout=timeout))

    def close(self) -> None:
        self.channel.close()


class _GrpcioStream:
    def __init__(self, call: Any) -> None:
        self.call = call

    def __next__(self) -> Any:
        try:
            return next(self.call)
        except grpc.RpcError as exc:
            raise CallError(StatusCode[exc.code().name], exc.details() or "") from None

    def cancel(self) -> None:
        self.call.cancel()


def socket_dir() -> str:
    """A short temporary directory: Unix socket paths must fit in 107 bytes."""
    import tempfile

    return tempfile.mkdtemp(prefix="sdp-", dir=os.environ.get("SDPLITE_TEST_TMP", "/tmp"))
