"""A gRPC client on a Unix socket: unary and server-streaming calls.

One :class:`Channel` is one connection with a reader thread; any number of
threads may make calls on it at once. Every failure surfaces as
:class:`~.status.GrpcError` with a status code: from the server, from a
deadline (DEADLINE_EXCEEDED), or from a lost connection (UNAVAILABLE).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Generic, Optional, TypeVar

import h2.errors
import h2.events
import h2.exceptions

from ..version import VERSION
from .connection import Connection
from .framing import DEFAULT_MAX_MESSAGE, MessageDecoder, encode_message
from .h2_protocol import CallState, H2Call, H2Protocol, Outgoing, StreamGone, error_name
from .header_checks import MalformedHeaders, check_response, check_trailers
from .status import (
    GrpcError,
    StatusCode,
    decode_grpc_message,
    format_grpc_timeout,
    status_for_http,
    status_for_reset,
)

__all__ = ["Channel", "ClientProtocol", "StreamingCall"]

T = TypeVar("T")

_USER_AGENT = f"grpc-python-sdplite/{VERSION}".encode("ascii")
_END = object()


class ClientCall(H2Call):
    __slots__ = ("decoder", "messages", "done", "code", "message", "deadline", "http_status")

    def __init__(self, stream_id: int, max_receive: int, deadline: Optional[float]) -> None:
        super().__init__(stream_id, CallState.SENDING)  # our headers go out at once
        self.decoder = MessageDecoder(max_receive)
        #: Payloads and finally _END, in arrival order.
        self.messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.done = threading.Event()
        self.code: Optional[StatusCode] = None
        self.message = ""
        self.deadline = deadline
        self.http_status = 0

    def error(self) -> Optional[GrpcError]:
        if self.code is None or self.code == StatusCode.OK:
            return None
        return GrpcError(self.code, self.message)


class ClientProtocol(H2Protocol):
    """The client side of one connection: response events in, call outcomes out; no I/O."""

    def __init__(self) -> None:
        super().__init__(client_side=True)
        self.calls: dict[int, ClientCall] = {}
        #: Set once the server's SETTINGS arrived (or the connection is gone).
        self.ready = threading.Event()

    def settle(self, call: ClientCall, code: StatusCode, message: str) -> None:
        """Record the final status of a call and wake its waiter: the one ending."""
        if call.code is None:
            if (
                code == StatusCode.CANCELLED
                and call.deadline is not None
                and time.monotonic() >= call.deadline
            ):
                code, message = StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
            call.code = code
            call.message = message
        call.state = CallState.ENDED
        self.calls.pop(call.stream_id, None)
        call.messages.put(_END)
        call.done.set()

    def cancel(self, call: ClientCall, code: StatusCode, message: str) -> None:
        """Give up on a call: settle it and RST_STREAM(CANCEL)."""
        if not call.done.is_set():
            self.settle(call, code, message)
            self.reset(call, h2.errors.ErrorCodes.CANCEL)

    def _on_headers(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        response = isinstance(event, h2.events.ResponseReceived)
        try:
            if response:
                check_response(event.headers)
            else:
                check_trailers(event.headers)
        except MalformedHeaders as exc:
            # A stream error (RFC 9113 8.1.1): this call fails, the connection stays.
            self.settle(call, StatusCode.INTERNAL, f"malformed response headers: {exc}")
            self.reset(call, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        status: Optional[bytes] = None
        message = b""
        content_type = b""
        for name, value in event.headers:
            if name == b":status":
                call.http_status = int(value)
            elif name == b"grpc-status":
                status = value
            elif name == b"grpc-message":
                message = value
            elif name == b"content-type":
                content_type = value
        if response and not content_type.startswith(b"application/grpc"):
            if status is None:
                code = status_for_http(call.http_status) if call.http_status != 200 else StatusCode.UNKNOWN
                self.settle(
                    call,
                    code,
                    f"unexpected HTTP status {call.http_status} / content-type {content_type!r}",
                )
                self.reset(call, h2.errors.ErrorCodes.CANCEL)
                return
        if status is not None:
            try:
                code = StatusCode(int(status))
            except ValueError:
                code, message = StatusCode.UNKNOWN, b"malformed grpc-status " + status
            call.code = code
            call.message = decode_grpc_message(message)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        if event.flow_controlled_length:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        call = self.calls.get(event.stream_id)
        if call is None or call.code is not None:
            return
        try:
            for payload in call.decoder.feed(event.data):
                call.messages.put(payload)
        except GrpcError as exc:
            self.settle(call, exc.code, exc.message)
            self.reset(call, h2.errors.ErrorCodes.CANCEL)

    def _on_ended(self, event: h2.events.StreamEnded) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        if call.code is None:
            code = status_for_http(call.http_status) if call.http_status != 200 else StatusCode.UNKNOWN
            self.settle(call, code, "stream ended without grpc-status")
        elif call.decoder.pending and call.code == StatusCode.OK:
            self.settle(call, StatusCode.INTERNAL, "stream ended in the middle of a message")
        else:
            self.settle(call, call.code, call.message)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            code = status_for_reset(event.error_code)
            self.settle(call, code, f"stream reset by the server ({error_name(event.error_code)})")

    def _on_settings(self, event: Any) -> None:
        self.ready.set()

    _handlers: dict[type, Callable[[Any, Any], None]] = {
        h2.events.ResponseReceived: _on_headers,
        h2.events.TrailersReceived: _on_headers,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_ended,
        h2.events.StreamReset: _on_reset,
        h2.events.RemoteSettingsChanged: _on_settings,
    }

    def stream_gone(self, call: H2Call) -> None:
        assert isinstance(call, ClientCall)
        self.settle(call, StatusCode.UNAVAILABLE, f"stream {call.stream_id} closed")

    def on_lost(self, reason: str) -> None:
        for call in list(self.calls.values()):
            self.settle(call, StatusCode.UNAVAILABLE, reason)
        self.ready.set()

    def has_free_stream(self) -> bool:
        return self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams


class Channel:
    """A connection to a gRPC server on a Unix socket, shared by many calls.

    ``connect_timeout`` bounds both the socket connect and the wait for the
    server's SETTINGS frame, as grpc-go's blocking dial does. With
    ``wait_ready=False`` the constructor returns once connected and the
    caller waits with :meth:`wait_ready`, which another thread's
    :meth:`close` ends at once (a stop need not wait out a silent server).
    """

    def __init__(
        self,
        path: str,
        *,
        connect_timeout: float = 10.0,
        authority: str = "localhost",
        max_receive_message: int = DEFAULT_MAX_MESSAGE,
        wait_ready: bool = True,
    ) -> None:
        self.path = path
        self.max_receive_message = max_receive_message
        self._authority = authority.encode("ascii")
        self._ready_by = time.monotonic() + connect_timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise GrpcError(StatusCode.UNAVAILABLE, f"cannot connect to {path}: {exc}") from None
        self._protocol = protocol = ClientProtocol()
        self._conn = Connection(sock, protocol, name=path)
        self._conn.locked(protocol.h2.initiate_connection)
        self._conn.start_reading(f"sdplite-client-{path}")
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the server's SETTINGS until ``connect_timeout`` has passed since the
        constructor; raise UNAVAILABLE (and close) if they do not come or :meth:`close` was called."""
        protocol = self._protocol
        if not protocol.ready.wait(max(0.0, self._ready_by - time.monotonic())) or protocol.closed:
            reason = protocol.close_reason or "no SETTINGS frame from the server in time"
            self.close()
            raise GrpcError(StatusCode.UNAVAILABLE, f"cannot connect to {self.path}: {reason}")

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once the connection is gone; every later call fails with UNAVAILABLE."""
        return self._conn.closed

    def close(self) -> None:
        """Send GOAWAY and close; calls still running fail with UNAVAILABLE."""
        self._conn.close(graceful=True)
        self._conn.join(5.0)

    def _start(
        self, path: str, request: Any, timeout: Optional[float], metadata: Sequence[tuple[str, str]]
    ) -> ClientCall:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        deadline = None if timeout is None else time.monotonic() + timeout
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode("ascii")),
            (b":authority", self._authority),
        ]
        if timeout is not None:
            if timeout <= 0:
                raise GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
            headers.append((b"grpc-timeout", format_grpc_timeout(timeout)))
        headers += [
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", _USER_AGENT),
        ]
        headers += [(k.lower().encode("ascii"), v.encode("ascii")) for k, v in metadata]
        conn = self._conn
        protocol = self._protocol
        with conn.lock:
            # Stream IDs must go out in order: allocate and send under one lock.
            while not protocol.closed and not protocol.has_free_stream():
                if not conn.cond.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    raise GrpcError(
                        StatusCode.DEADLINE_EXCEEDED, "deadline exceeded waiting for a free stream"
                    )
            if protocol.closed:
                raise GrpcError(StatusCode.UNAVAILABLE, protocol.close_reason or "channel closed")
            call = ClientCall(protocol.h2.get_next_available_stream_id(), self.max_receive_message, deadline)
            try:
                protocol.h2.send_headers(call.stream_id, headers)
            except h2.exceptions.ProtocolError as exc:
                raise GrpcError(StatusCode.UNAVAILABLE, f"cannot start call: {exc}") from None
            protocol.calls[call.stream_id] = call
        try:
            conn.write(Outgoing(call, data=encode_message(payload), end_stream=True))
        except StreamGone:
            pass  # the status explains why, once the call settles
        return call

    def _cancel(self, call: ClientCall, code: StatusCode, message: str) -> None:
        self._conn.locked(self._protocol.cancel, call, code, message)

    def unary(
        self,
        path: str,
        request: Any,
        response_type: type[T],
        timeout: Optional[float] = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> T:
        """Call a unary method and return its decoded response."""
        call = self._start(path, request, timeout, metadata)
        wait = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
        if not call.done.wait(wait):
            self._cancel(call, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        error = call.error()
        if error is not None:
            raise error
        payloads = []
        while True:
            item = call.messages.get()
            if item is _END:
                break
            payloads.append(item)
        if len(payloads) != 1:
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"expected one response message, got {len(payloads)}")
        return _decode(response_type, payloads[0])

    def server_streaming(
        self,
        path: str,
        request: Any,
        response_type: type[T],
        timeout: Optional[float] = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> StreamingCall[T]:
        """Start a server-streaming call; iterate the result for the responses."""
        return StreamingCall(self, self._start(path, request, timeout, metadata), response_type)


class StreamingCall(Generic[T]):
    """The responses of a server-streaming call, as an iterator.

    Iteration ends when the server ends the stream with OK and raises
    :class:`GrpcError` for any other status. :meth:`cancel` may be called
    from any thread; a blocked ``next()`` then raises CANCELLED.
    """

    def __init__(self, channel: Channel, call: ClientCall, response_type: type[T]) -> None:
        self._channel = channel
        self._call = call
        self._type = response_type

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        call = self._call
        wait = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
        try:
            item = call.messages.get(timeout=wait)
        except queue.Empty:
            self._channel._cancel(call, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            item = _END
        if item is _END:
            call.messages.put(_END)  # stay ended for later next() calls
            error = call.error()
            if error is not None:
                raise error
            raise StopIteration
        return _decode(self._type, item)

    def cancel(self) -> None:
        """Cancel the call (RST_STREAM CANCEL); harmless once it has ended."""
        self._channel._cancel(self._call, StatusCode.CANCELLED, "cancelled by the client")

    def __enter__(self) -> StreamingCall[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    @property
    def code(self) -> Optional[StatusCode]:
        """The final status code, once the call has ended."""
        return self._call.code if self._call.done.is_set() else None

    @property
    def details(self) -> str:
        """The final status message, once the call has ended."""
        return self._call.message


def _decode(response_type: type[T], payload: bytes) -> T:
    if response_type is bytes:
        return payload  # type: ignore[return-value]
    parse: Callable[[bytes], T] = getattr(response_type, "FromString")  # noqa: B009
    try:
        return parse(payload)
    except Exception as exc:
        raise GrpcError(StatusCode.INTERNAL, f"could not decode the response message: {exc}") from None
