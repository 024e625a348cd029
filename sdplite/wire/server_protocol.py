"""The server's call handling: request bytes in, decisions out, no socket, no thread.

:class:`ServerProtocol` turns what a peer sends into three kinds of decision:

- *run this call*: :meth:`ServerProtocol.receive` returns the calls whose
  request is complete and checked, in order;
- *send these frames*: everything it decides to send is queued in h2, and
  :meth:`~.h2_protocol.H2Protocol.data_to_send` hands the bytes over;
- *this call ended with this status*: every call ends through one
  transition, :meth:`ServerProtocol._end`, which records the status on the
  call (``call.status``), forgets it and wakes whoever waits on it.

It checks request headers in one pass (:mod:`.header_checks`), refuses what
gRPC peers would refuse, as they would (docs/design.md, "What the wire relies
on"), keeps deadlines, and maps every ending to a gRPC status. Who runs a
call, on which thread, and how bytes reach the socket is
:mod:`.connection`'s business; a test drives this class with bytes alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Set
from typing import Any, Callable, Optional

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..logtext import Repeats, cut
from .framing import DEFAULT_MAX_MESSAGE, MessageDecoder, encode_message
from .h2_protocol import CallState, H2Call, H2Protocol, Outgoing, error_name
from .handlers import Method, ResponseStream, ServerContext
from .header_checks import MalformedHeaders, check_trailers, parse_request
from .hpack_shortcuts import OK_RESPONSE_HEADERS, OK_TRAILERS  # constant HPACK blocks
from .status import GrpcError, StatusCode, encode_grpc_message, parse_grpc_timeout

__all__ = ["Limits", "ServerCall", "ServerProtocol", "payload_of"]

log = logging.getLogger("sdplite.wire")

_SHUTTING_DOWN = "server is shutting down"


# Enum members as module names: a class attribute of an Enum costs four times a global
# lookup, and the call path tests the state about ten times per call.
_RECEIVING, _RECEIVED, _SENDING, _ENDED = (
    CallState.RECEIVING,
    CallState.RECEIVED,
    CallState.SENDING,
    CallState.ENDED,
)


class Limits:
    """What a server connection advertises and enforces (see :class:`.server.Server`)."""

    __slots__ = (
        "max_receive_message",
        "max_concurrent_streams",
        "max_header_list_size",
        "stream_window",
        "connection_window",
    )

    def __init__(
        self,
        max_receive_message: int = DEFAULT_MAX_MESSAGE,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 16 * 1024,
        stream_window: int = 1024 * 1024,
        connection_window: int = 4 * 1024 * 1024,
    ) -> None:
        self.max_receive_message = max_receive_message
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.stream_window = stream_window
        self.connection_window = max(connection_window, 65535)


class ServerCall(H2Call):
    """One incoming call; its ``state`` is a :class:`~.h2_protocol.CallState`."""

    __slots__ = ("method", "decoder", "messages", "deadline", "context", "stream", "status")

    def __init__(self, stream_id: int, method: Optional[Method[Any]], max_receive: int) -> None:
        super().__init__(stream_id, _RECEIVING)
        self.method = method
        self.decoder = MessageDecoder(max_receive)
        self.messages: list[bytes] = []
        #: ``time.monotonic()`` value past which the call is cancelled, or None.
        self.deadline: Optional[float] = None
        self.context: Optional[ServerContext] = None
        #: The response stream of a server-streaming call; None for a unary call.
        self.stream: Optional[ResponseStream] = None
        #: (code, message) once the call has ended; CANCELLED if it was cancelled.
        self.status: Optional[tuple[StatusCode, str]] = None

    @property
    def unary(self) -> bool:
        """A unary call: one response, quick enough to run on the reader."""
        return self.stream is None


def payload_of(message: Any) -> bytes:
    """A response (protobuf message or serialised bytes) framed for the wire."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return encode_message(bytes(message))
    return encode_message(message.SerializeToString())


def _status_headers(code: StatusCode, message: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"grpc-status", str(int(code)).encode("ascii"))]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message)))
    return headers


class ServerProtocol(H2Protocol):
    """The server side of one connection, without I/O (see the module docstring)."""

    def __init__(
        self,
        methods: Mapping[str, Method[Any]],
        limits: Optional[Limits] = None,
        name: str = "server",
    ) -> None:
        super().__init__(client_side=False)
        self.methods = methods
        self.services: Set[str] = {path.split("/")[1] for path in methods}
        self.limits = limits or Limits()
        self.name = name
        #: Calls in progress, by stream ID.
        self.calls: dict[int, ServerCall] = {}
        #: Set by :meth:`drain`: new calls are refused with UNAVAILABLE.
        self.draining = False
        #: Calls whose handler runs now, ended or not (set operations are atomic:
        #: the threads running them add and discard without the lock).
        self.running: set[ServerCall] = set()
        self._deadlines = 0  # calls with a deadline, to skip the scan when none
        self._ready: list[ServerCall] = []  # filled while one batch of events is handled
        self._malformed: Optional[Repeats] = None  # made at the first malformed request

    def start(self) -> None:
        """Queue our SETTINGS and connection window: the first bytes to send, at once.

        grpc-go waits for the server's SETTINGS before its first call
        (docs/design.md, "Connection setup").
        """
        limits = self.limits
        h2conn = self.h2
        h2conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            },
        )
        h2conn.initiate_connection()
        # h2 applies the advertised header list limit only once the peer
        # acknowledges it (64 KiB until then): hold the line from the start.
        h2conn.decoder.max_header_list_size = limits.max_header_list_size
        h2conn.increment_flow_control_window(limits.connection_window - 65535)

    @property
    def idle(self) -> bool:
        """No call in progress (or the connection is gone)."""
        return not self.calls or self.closed

    # -- events ----------------------------------------------------------------

    def on_events(self, events: list[Any]) -> list[ServerCall]:
        ready: list[ServerCall] = []
        self._ready = ready
        super().on_events(events)
        self._ready = []
        return ready

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        try:
            request = parse_request(event.headers)
        except MalformedHeaders as exc:
            self._refuse_malformed(sid, str(exc))
            return
        path_text = request.path.decode("utf-8", "replace")
        method = self.methods.get(path_text)
        call = ServerCall(sid, method, self.limits.max_receive_message)
        self.calls[sid] = call
        if event.stream_ended is not None:
            call.state = _RECEIVED
        refusal = self._refusal(request, method, path_text)
        if refusal is not None:
            self.finish(call, *refusal)
            return
        assert method is not None
        if request.timeout is not None:
            try:
                seconds = parse_grpc_timeout(request.timeout)
            except ValueError as exc:
                self.finish(call, StatusCode.INTERNAL, str(exc), http=400)
                return
            call.deadline = time.monotonic() + seconds
            self._deadlines += 1
        call.context = ServerContext(path_text, request.metadata, call.deadline)
        if method.streaming:
            call.stream = ResponseStream(call.context, latest_only=method.latest_only)
        if call.state is _RECEIVED:
            self._request_complete(call)

    def _refusal(
        self, request: Any, method: Optional[Method[Any]], path: str
    ) -> Optional[tuple[StatusCode, str, int]]:
        """Why a well-formed request is answered at once with a status, or None.

        The HTTP statuses and codes are grpc-go's (docs/design.md, "Requests").
        """
        if request.method != b"POST":
            return StatusCode.INTERNAL, f"invalid :method {request.method!r}", 405
        if request.authority is None:
            return StatusCode.INTERNAL, "missing :authority and host", 400
        if not request.content_type.startswith(b"application/grpc"):
            message = f"invalid gRPC request content-type {request.content_type!r}"
            return StatusCode.INVALID_ARGUMENT, message, 415
        if self.draining:
            return StatusCode.UNAVAILABLE, _SHUTTING_DOWN, 200
        if method is None:
            return StatusCode.UNIMPLEMENTED, self._unknown(path), 200
        if request.encoding not in (None, b"identity"):
            return StatusCode.UNIMPLEMENTED, f"grpc-encoding {request.encoding!r} is not supported", 200
        return None

    def _unknown(self, path: str) -> str:
        service, _, name = path.lstrip("/").partition("/")
        if service not in self.services:
            return f"unknown service {service}"
        return f"unknown method {name} for service {service}"

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        try:
            check_trailers(event.headers)
        except MalformedHeaders as exc:
            call = self.calls.get(event.stream_id)
            if call is not None:
                self._end(call, StatusCode.CANCELLED, f"malformed request trailers: {exc}", cancelled=True)
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
        if call is None or call.context is None:
            return
        try:
            call.messages.extend(call.decoder.feed(event.data))
        except GrpcError as exc:
            self.finish(call, exc.code, exc.message)
            return
        if len(call.messages) > 1:
            self.finish(call, StatusCode.UNIMPLEMENTED, "expected one request message, got more")
            return
        if event.stream_ended is not None:
            call.state = _RECEIVED
            self._request_complete(call)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None and call.state is _RECEIVING:
            call.state = _RECEIVED
            if call.context is not None:
                self._request_complete(call)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            reason = f"stream reset by the client ({error_name(event.error_code)})"
            self._end(call, StatusCode.CANCELLED, reason, cancelled=True)

    _handlers: dict[type, Callable[[Any, Any], None]] = {
        h2.events.RequestReceived: _on_request,
        h2.events.TrailersReceived: _on_trailers,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_stream_ended,
        h2.events.StreamReset: _on_reset,
    }

    def _request_complete(self, call: ServerCall) -> None:
        """The whole request is in: refuse it, or decide to run it."""
        if call.decoder.pending or len(call.messages) != 1:
            self.finish(call, StatusCode.UNIMPLEMENTED, "expected one request message, got none")
            return
        self._ready.append(call)

    # -- responses (called from the threads that run calls) ---------------------

    def response(self, call: ServerCall, message: Any) -> Outgoing:
        """A unary call's whole answer: headers, the message, OK trailers (one flush)."""
        return Outgoing(call, OK_RESPONSE_HEADERS, payload_of(message), OK_TRAILERS)

    def stream_message(self, call: ServerCall, message: Any) -> Outgoing:
        """One message of a stream, after the headers if they have not gone yet."""
        headers = None if call.state is _SENDING else OK_RESPONSE_HEADERS
        return Outgoing(call, headers, payload_of(message))

    def stream_end(self, call: ServerCall, code: StatusCode, message: str) -> Optional[Outgoing]:
        """End a stream: an OK after messages goes in order behind them, through
        the window (returned to send); anything else ends the call at once."""
        if code == StatusCode.OK and call.state is _SENDING:
            return Outgoing(call, trailers=OK_TRAILERS)
        self.finish(call, code, message)
        return None

    def sent_trailers(self, call: H2Call) -> None:
        assert isinstance(call, ServerCall)
        self._end(call, StatusCode.OK, "", cancelled=False)

    def busy(self, call: ServerCall) -> None:
        """No thread can run ``call``: refuse it so the client may retry."""
        self.finish(call, StatusCode.UNAVAILABLE, "server is busy: too many calls in progress")

    # -- endings ---------------------------------------------------------------

    def finish(self, call: ServerCall, code: StatusCode, message: str, http: int = 200) -> None:
        """End a call now with a status; no flow-control window is needed for headers."""
        if call.state is not _ENDED:
            self._send_status(call, code, message, http)
            self._end(call, code, message, cancelled=False)

    def _send_status(self, call: ServerCall, code: StatusCode, message: str, http: int = 200) -> None:
        """Trailers, or Trailers-Only before any headers (docs/design.md, "Responses")."""
        status = _status_headers(code, message)
        try:
            if call.state is _SENDING:
                self.h2.send_headers(call.stream_id, status, end_stream=True)
            else:
                headers = [(b":status", str(http).encode("ascii")), OK_RESPONSE_HEADERS[1]]
                self.h2.send_headers(call.stream_id, headers + status, end_stream=True)
            if call.state is _RECEIVING:
                # Done before the request finished: free the stream (RFC 9113 8.1).
                self.h2.reset_stream(call.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except Exception:  # the stream is already gone on the h2 side
            pass

    def stream_gone(self, call: H2Call) -> None:
        assert isinstance(call, ServerCall)
        self._end(call, StatusCode.CANCELLED, "stream closed", cancelled=True)

    def _end(self, call: ServerCall, code: StatusCode, message: str, cancelled: bool) -> None:
        """THE transition that ends a call: record, forget, wake.

        ``cancelled``: the handler's context reports cancellation (the peer
        reset, the deadline passed, the connection went). A stream's sender
        is woken either way (it must stop waiting for messages).
        """
        if call.state is _ENDED:
            return
        call.state = _ENDED
        call.status = (code, message)
        self.calls.pop(call.stream_id, None)
        if call.deadline is not None:
            self._deadlines -= 1
        context = call.context
        if context is not None:
            if cancelled:
                context._cancel()
            if call.stream is not None:
                call.stream._cancel()

    def on_lost(self, reason: str) -> None:
        for call in list(self.calls.values()):
            self._end(call, StatusCode.CANCELLED, reason, cancelled=True)
        if self._malformed is not None:
            self._malformed.flush()  # a storm of malformed requests, summed up

    def drain(self) -> None:
        """Refuse new calls; end open streams with UNAVAILABLE once their queued messages are out."""
        self.draining = True
        for call in self.calls.values():
            if call.stream is not None and not call.stream.ended:
                call.stream.end(StatusCode.UNAVAILABLE, _SHUTTING_DOWN)

    # -- deadlines -------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        if not self._deadlines:
            return None
        return min(c.deadline for c in self.calls.values() if c.deadline is not None)

    def expire(self, now: float) -> None:
        """Cancel the calls past their deadline, as grpc-go does (docs/design.md, "Deadlines")."""
        for call in [c for c in self.calls.values() if c.deadline is not None and c.deadline <= now]:
            if call.state is _SENDING:
                # Mid-response: a status cannot follow a partial message.
                self.reset(call, h2.errors.ErrorCodes.CANCEL)
            else:
                self._send_status(call, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            self._end(call, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", cancelled=True)
