"""The server side of one connection: requests in, handlers out, statuses back.

The reader thread (see :mod:`.connection`) turns h2 events into calls. It
runs the unary calls it reads itself and hands every stream to a worker; a
call that runs past ``Server.handoff_after`` seconds loses it the reading
role (see :mod:`.reader_calls`). The reader also enforces deadlines: it
wakes when the nearest one passes and ends that call.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..logtext import Repeats, cut, cut_traceback
from .connection import H2Stream, StreamGone
from .framing import MessageDecoder, encode_message
from .handlers import CANCELLED, Method, ResponseStream, ServerContext, _End, status_of
from .header_checks import MalformedHeaders, check_trailers, parse_request
from .hpack_shortcuts import OK_RESPONSE_HEADERS, OK_TRAILERS  # constant HPACK blocks
from .reader_calls import CallRunningTransport
from .status import GrpcError, StatusCode, encode_grpc_message, parse_grpc_timeout

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ServerConnection"]

log = logging.getLogger("sdplite.wire")


def _status_headers(code: StatusCode, message: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"grpc-status", str(int(code)).encode("ascii"))]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message)))
    return headers


class ServerCall(H2Stream):
    """One incoming call."""

    __slots__ = (
        "method",
        "decoder",
        "messages",
        "half_closed",
        "deadline",
        "context",
        "stream",
    )

    def __init__(self, stream_id: int, method: Optional[Method[Any]], max_receive: int) -> None:
        super().__init__(stream_id)
        self.method = method
        self.decoder = MessageDecoder(max_receive)
        self.messages: list[bytes] = []
        self.half_closed = False
        self.deadline: Optional[float] = None
        self.context: Optional[ServerContext] = None
        self.stream: Optional[ResponseStream] = None


class ServerConnection(CallRunningTransport):
    def __init__(self, sock: socket.socket, server: Server, number: int) -> None:
        super().__init__(
            sock, client_side=False, name=f"{server.path}#{number}", handoff_after=server.handoff_after
        )
        self.server = server
        self.calls: dict[int, ServerCall] = {}
        self._deadlines = 0  # calls with a deadline, to skip the scan when none
        self._running: set[ServerCall] = set()  # calls whose handler runs now (set ops are atomic)
        self._malformed: Optional[Repeats] = None  # made at the first malformed request

    def start(self) -> None:
        """Send our SETTINGS at once (grpc-go waits for them), then read."""
        with self.lock:
            h2conn = self.h2
            h2conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.server.stream_window,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.server.max_header_list_size,
                },
            )
            h2conn.initiate_connection()
            # h2 applies the advertised header list limit only once the peer
            # acknowledges it (64 KiB until then): hold the line from the start.
            h2conn.decoder.max_header_list_size = self.server.max_header_list_size
            h2conn.increment_flow_control_window(self.server.connection_window - 65535)
        self.flush()
        self.start_reader(f"sdplite-conn-{self.name}")

    def start_watchdog(self, watchdog: Callable[[], None]) -> bool:
        return self.server.pool.submit(watchdog)

    def run_call(self, call: ServerCall) -> None:
        self._run(call)

    def hand_off(self, call: ServerCall) -> None:
        if not self.server.pool.submit(lambda: self._run(call)):
            with self.lock:
                self._finish(call, StatusCode.UNAVAILABLE, "server is busy: too many calls in progress")
            self.flush()

    def running_handlers(self) -> list[str]:
        """The methods whose handlers are running now (for a stop to name what it abandons)."""
        return [call.context.method for call in list(self._running) if call.context is not None]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in progress (or the connection is gone)."""
        with self.lock:
            return self.cond.wait_for(lambda: not self.calls or self.closed, timeout)

    # -- events (lock held) --------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        try:
            request = parse_request(event.headers)
        except MalformedHeaders as exc:
            self._refuse_malformed(sid, str(exc))
            return
        path_text = request.path.decode("utf-8", "replace")
        method = self.server.methods.get(path_text)
        call = ServerCall(sid, method, self.server.max_receive_message)
        self.calls[sid] = call
        if event.stream_ended is not None:
            call.half_closed = True
        if request.method != b"POST":
            self._finish(call, StatusCode.INTERNAL, f"invalid :method {request.method!r}", http=405)
            return
        if request.authority is None:
            # As grpc-go does (GRPC-H2.md 1.2): HTTP semantics want one or the other.
            self._finish(call, StatusCode.INTERNAL, "missing :authority and host", http=400)
            return
        content_type = request.content_type
        if not content_type.startswith(b"application/grpc"):
            self._finish(
                call,
                StatusCode.INVALID_ARGUMENT,
                f"invalid gRPC request content-type {content_type!r}",
                http=415,
            )
            return
        if self.server.stopping:
            self._finish(call, StatusCode.UNAVAILABLE, "server is shutting down")
            return
        if method is None:
            self._finish(call, StatusCode.UNIMPLEMENTED, _unknown(path_text, self.server.services))
            return
        encoding = request.encoding
        if encoding not in (None, b"identity"):
            self._finish(call, StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported")
            return
        timeout = request.timeout
        if timeout is not None:
            try:
                seconds = parse_grpc_timeout(timeout)
            except ValueError as exc:
                self._finish(call, StatusCode.INTERNAL, str(exc), http=400)
                return
            call.deadline = time.monotonic() + seconds
            self._deadlines += 1
        call.context = ServerContext(path_text, request.metadata, call.deadline)
        if method.streaming:
            call.stream = ResponseStream(call.context, latest_only=method.latest_only)
        if call.half_closed:
            self._dispatch_call(call)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        try:
            check_trailers(event.headers)
        except MalformedHeaders as exc:
            call = self.calls.get(event.stream_id)
            if call is not None:
                self._cancel(call)
            self._refuse_malformed(event.stream_id, str(exc))

    def _refuse_malformed(self, sid: int, problem: str) -> None:
        """A malformed request: RST_STREAM(PROTOCOL_ERROR) on that stream alone (RFC 9113 8.1.1)."""
        if self._malformed is None:
            self._malformed = Repeats(log)
        self._malformed.note(
            "malformed",
            f"{self.name}: {{count}} malformed requests",
            logging.DEBUG,
            "%s: stream %d: malformed request: %s",
            self.name,
            sid,
            cut(problem),
        )
        try:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        except h2.exceptions.ProtocolError:  # already closed
            pass

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        # Hand the window back at once, for every stream, tracked or not:
        # messages are bounded by the receive limit, checked on the prefix.
        if event.flow_controlled_length:
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        call = self.calls.get(sid)
        if call is None or call.closed or call.context is None:
            return
        try:
            call.messages.extend(call.decoder.feed(event.data))
        except GrpcError as exc:
            self._finish(call, exc.code, exc.message)
            return
        if len(call.messages) > 1:
            self._finish(call, StatusCode.UNIMPLEMENTED, "expected one request message, got more")
            return
        if event.stream_ended is not None:
            call.half_closed = True
            self._dispatch_call(call)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None and not call.half_closed:
            call.half_closed = True
            if not call.closed and call.context is not None:
                self._dispatch_call(call)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        call = self.calls.pop(event.stream_id, None)
        if call is not None:
            self._cancel(call)

    _event_handlers = {
        h2.events.RequestReceived: _on_request,
        h2.events.TrailersReceived: _on_trailers,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_stream_ended,
        h2.events.StreamReset: _on_reset,
    }

    # -- call state (lock held) ----------------------------------------------

    def _dispatch_call(self, call: ServerCall) -> None:
        if call.decoder.pending or len(call.messages) != 1:
            self._finish(call, StatusCode.UNIMPLEMENTED, "expected one request message, got none")
            return
        if call.stream is None and self.run_on_reader(call):
            return  # a unary call: the reader runs it (see reader_calls.py)
        if not self.server.pool.submit(lambda: self._run(call)):
            self._finish(call, StatusCode.UNAVAILABLE, "server is busy: too many calls in progress")

    def _finish(self, call: ServerCall, code: StatusCode, message: str, http: int = 200) -> None:
        """End a call now with a status (no window needed for headers)."""
        if call.closed:
            return
        status = _status_headers(code, message)
        try:
            if call.headers_sent:
                self.h2.send_headers(call.stream_id, status, end_stream=True)
            else:
                headers = [(b":status", str(http).encode("ascii")), OK_RESPONSE_HEADERS[1]]
                self.h2.send_headers(call.stream_id, headers + status, end_stream=True)
                call.headers_sent = True
            if not call.half_closed:
                # We are done before the request finished: free the stream.
                self.h2.reset_stream(call.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except Exception:  # stream already gone on the h2 side
            pass
        self._cancel(call, finished=True)

    def _cancel(self, call: ServerCall, finished: bool = False) -> None:
        """Forget a call and wake whoever waits on it."""
        call.closed = True
        self.calls.pop(call.stream_id, None)
        if call.deadline is not None:
            call.deadline = None
            self._deadlines -= 1
        if call.context is not None:
            if not finished:
                call.context._cancel()
            if call.stream is not None:
                call.stream._cancel()
        self.cond.notify_all()

    def poll_timeout(self) -> Optional[float]:
        if not self._deadlines:
            return None
        nearest = min(c.deadline for c in self.calls.values() if c.deadline is not None)
        return nearest - time.monotonic()

    def on_timer(self) -> None:
        now = time.monotonic()
        for call in [c for c in self.calls.values() if c.deadline is not None and c.deadline <= now]:
            if call.headers_sent:
                # Mid-response: a status cannot follow a partial message.
                self.reset(call, h2.errors.ErrorCodes.CANCEL)
                self._cancel(call)
            else:
                self._finish(call, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                if call.context is not None:
                    call.context._cancel()

    def on_lost(self, reason: str) -> None:
        for call in list(self.calls.values()):
            self._cancel(call)

    def on_closed(self) -> None:
        if self._malformed is not None:
            self._malformed.flush()
        self.server._connection_closed(self)

    # -- workers -------------------------------------------------------------

    def _run(self, call: ServerCall) -> None:
        context = call.context
        method = call.method
        assert context is not None and method is not None
        self._running.add(call)
        try:
            try:
                request = method.decode(call.messages[0])
            except Exception as exc:
                raise GrpcError(StatusCode.INTERNAL, f"could not decode the request message: {exc}") from exc
            if method.streaming:
                self._run_streaming(call, method, request)
            else:
                response = method.handler(request, context)
                self.write(call, OK_RESPONSE_HEADERS, _payload(response), OK_TRAILERS)
                with self.lock:
                    self._cancel(call, finished=True)
        except StreamGone:
            pass
        except BaseException as exc:
            code, message = status_of(exc)
            if not isinstance(exc, GrpcError):
                log.error("handler for %s raised %s\n%s", context.method, cut(message), cut_traceback(exc))
            with self.lock:
                self._finish(call, code, message)
            self.flush()
        finally:
            self._running.discard(call)
            context._finish()

    def _run_streaming(self, call: ServerCall, method: Method[Any], request: Any) -> None:
        stream = call.stream
        assert stream is not None
        items = method.handler(request, stream)
        if items is not None:
            for item in items:
                if call.closed:
                    return
                self._send_message(call, item)
            stream.end()
        while True:
            item = stream.next_item()
            if item is CANCELLED:
                return
            if isinstance(item, _End):
                if item.code == StatusCode.OK and call.headers_sent:
                    self.write(call, trailers=OK_TRAILERS)
                    with self.lock:
                        self._cancel(call, finished=True)
                else:
                    with self.lock:
                        self._finish(call, item.code, item.message)
                    self.flush()
                return
            self._send_message(call, item)

    def _send_message(self, call: ServerCall, item: Any) -> None:
        headers = None if call.headers_sent else OK_RESPONSE_HEADERS
        self.write(call, headers, _payload(item))


def _payload(message: Any) -> bytes:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return encode_message(bytes(message))
    return encode_message(message.SerializeToString())


def _unknown(path: str, services: set[str]) -> str:
    service, _, name = path.lstrip("/").partition("/")
    if service not in services:
        return f"unknown service {service}"
    return f"unknown method {name} for service {service}"
