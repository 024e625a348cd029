"""The server's call handling on its own: bytes in, decisions and bytes out, no socket, no thread.

A plain h2 client (tests/raw_h2.py's MemoryClient, or a bare H2Connection)
writes what grpc-go or grpcio would send; the ServerProtocol answers with
bytes and with decisions: which calls to run, and how each call ended.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from sdplite.wire import StatusCode, server_streaming, unary
from sdplite.wire.h2_protocol import CallState, Outgoing, StreamGone
from sdplite.wire.server_connection import MemoryLink, run_call
from sdplite.wire.server_protocol import Limits, ServerCall, ServerProtocol

from echo_service import ECHO, FAIL, RAISE, WATCH, Hub, sdplite_methods
from raw_h2 import MemoryClient, grpc_frame, request_headers

#: What a grpc-go client (the kubelet) sends for a unary call, field for field.
GRPC_GO_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", ECHO.encode()),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-go/1.33.0"),
    (b"te", b"trailers"),
]


class Peer:
    """A bare h2 client and a ServerProtocol, bytes handed across by the test."""

    def __init__(self, limits: Limits | None = None, methods: Any = None) -> None:
        self.server = ServerProtocol({m.path: m for m in methods or sdplite_methods(Hub())}, limits)
        self.server.start()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.events: list[Any] = []
        self.read()

    def send(self) -> list[ServerCall]:
        """Client bytes to the server; the calls it decided to run."""
        return self.server.receive(self.client.data_to_send())

    def read(self) -> list[Any]:
        """Server bytes to the client; the client's events."""
        events = self.client.receive_data(self.server.data_to_send())
        self.events += events
        return events

    def request(self, headers: Any = GRPC_GO_HEADERS, body: bytes = b"", end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers)
        if end:
            self.client.send_data(sid, grpc_frame(body), end_stream=True)
        return sid

    def answer(self, sid: int) -> dict[bytes, bytes]:
        """Every header and trailer the client got on ``sid``, plus b"data" and b"reset"."""
        found: dict[bytes, bytes] = {}
        for event in self.events:
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                found.update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                found[b"data"] = found.get(b"data", b"") + event.data
            elif isinstance(event, h2.events.StreamReset):
                found[b"reset"] = str(int(event.error_code)).encode()
        return found


def test_a_grpc_go_unary_request_as_bytes_gets_its_answer_as_bytes() -> None:
    peer = Peer()
    sid = peer.request(body=BytesValue(value=b"hi").SerializeToString())
    ready = peer.send()
    assert [c.stream_id for c in ready] == [sid] and ready[0].unary
    call = ready[0]
    peer.read()  # the SETTINGS ACK, and nothing on the stream until the call runs
    assert call.state is CallState.RECEIVED and peer.answer(sid) == {}
    run_call(MemoryLink(peer.server), call)
    peer.read()
    got = peer.answer(sid)
    assert got[b":status"] == b"200" and got[b"content-type"] == b"application/grpc"
    assert got[b"grpc-status"] == b"0"
    assert BytesValue.FromString(got[b"data"][5:]).value == b"hi"
    assert call.state is CallState.ENDED and call.status == (StatusCode.OK, "")
    assert peer.server.calls == {}


def test_a_refused_request_is_never_run_and_ends_with_its_status() -> None:
    peer = Peer()
    sid = peer.request([(n, b"/test.Echo/Nope" if n == b":path" else v) for n, v in GRPC_GO_HEADERS])
    assert peer.send() == []
    peer.read()
    got = peer.answer(sid)
    assert got[b"grpc-status"] == str(int(StatusCode.UNIMPLEMENTED)).encode()
    assert got[b"grpc-message"] == b"unknown method Nope for service test.Echo"
    assert b"data" not in got  # Trailers-Only


def test_handler_errors_become_statuses() -> None:
    client = MemoryClient(sdplite_methods(Hub()))
    sid = client.call(FAIL, grpc_frame(StringValue(value="NOT_FOUND:no such gpu").SerializeToString()))
    assert client.status(sid) == (StatusCode.NOT_FOUND, "no such gpu")
    sid = client.call(RAISE, grpc_frame(StringValue(value="boom").SerializeToString()))
    assert client.status(sid) == (StatusCode.UNKNOWN, "ValueError: boom")


def test_the_deadline_ends_a_waiting_call_with_deadline_exceeded_and_cancels_its_context() -> None:
    peer = Peer()
    sid = peer.request(GRPC_GO_HEADERS + [(b"grpc-timeout", b"100m")])
    [call] = peer.send()
    deadline = peer.server.next_deadline()
    assert deadline is not None and call.context is not None
    peer.server.expire(deadline - 0.001)
    assert call.state is CallState.RECEIVED  # not yet
    peer.server.expire(deadline)
    peer.read()
    assert peer.answer(sid)[b"grpc-status"] == str(int(StatusCode.DEADLINE_EXCEEDED)).encode()
    assert call.status == (StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    assert call.context.cancelled() and peer.server.next_deadline() is None


def test_the_deadline_mid_response_resets_the_stream() -> None:
    peer = Peer()
    sid = peer.request(GRPC_GO_HEADERS + [(b"grpc-timeout", b"1S")])
    [call] = peer.send()
    assert peer.server.send(peer.server.stream_message(call, b"part"))  # headers and a message out
    assert call.state is CallState.SENDING
    peer.server.expire(peer.server.next_deadline() or 0.0)
    peer.read()
    assert peer.answer(sid)[b"reset"] == str(int(h2.errors.ErrorCodes.CANCEL)).encode()
    assert call.state is CallState.ENDED and call.context is not None and call.context.cancelled()


def test_a_client_reset_cancels_that_call_only() -> None:
    peer = Peer()
    first = peer.request()
    second = peer.request()
    calls = peer.send()
    peer.client.reset_stream(first, h2.errors.ErrorCodes.CANCEL)
    assert peer.send() == []
    assert calls[0].status is not None and calls[0].status[0] == StatusCode.CANCELLED
    assert calls[0].context is not None and calls[0].context.cancelled()
    assert calls[1].state is CallState.RECEIVED and list(peer.server.calls) == [second]


def test_goaway_from_the_peer_ends_every_call() -> None:
    peer = Peer()
    peer.request()
    [call] = peer.send()
    peer.client.close_connection()
    peer.send()
    assert peer.server.closed and "GOAWAY" in peer.server.close_reason
    assert call.status == (StatusCode.CANCELLED, peer.server.close_reason)


def test_a_stream_sends_messages_then_ok_trailers() -> None:
    peer = Peer()
    sid = peer.request([(n, WATCH.encode() if n == b":path" else v) for n, v in GRPC_GO_HEADERS])
    [call] = peer.send()
    assert not call.unary and call.stream is not None
    link = MemoryLink(peer.server)
    for text in ("a", "b"):
        link.write(peer.server.stream_message(call, StringValue(value=text)))
    out = peer.server.stream_end(call, StatusCode.OK, "")
    assert out is not None
    link.write(out)
    peer.read()
    got = peer.answer(sid)
    assert got[b"grpc-status"] == b"0" and got[b"data"].count(b"\x00\x00\x00\x00\x03\n\x01") == 2
    assert call.status == (StatusCode.OK, "")


def test_sending_stops_at_the_window_and_goes_on_when_it_opens() -> None:
    """The send steps never block: they send what the window allows and say whether they are done."""
    peer = Peer()
    peer.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    sid = peer.request()
    [call] = peer.send()
    peer.read()  # the server acknowledges the settings
    out = peer.server.response(call, b"x" * 250)
    assert not peer.server.send(out) and out.offset == 100
    assert not peer.server.can_send(call)
    peer.read()
    peer.client.increment_flow_control_window(1000, sid)
    peer.send()
    assert peer.server.can_send(call)
    assert peer.server.send(out)
    peer.read()
    assert len(peer.answer(sid)[b"data"]) == 255 and call.status == (StatusCode.OK, "")


def test_a_memory_link_cannot_wait_for_a_window() -> None:
    peer = Peer()
    peer.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    peer.request()
    [call] = peer.send()
    with pytest.raises(StreamGone):
        MemoryLink(peer.server).write(Outgoing(call, data=b"y" * 50))


def test_drain_refuses_new_calls_and_ends_streams_unavailable() -> None:
    peer = Peer()
    peer.request([(n, WATCH.encode() if n == b":path" else v) for n, v in GRPC_GO_HEADERS])
    [stream_call] = peer.send()
    peer.server.drain()
    assert stream_call.stream is not None and stream_call.stream.ended
    sid = peer.request()
    assert peer.send() == []
    peer.read()
    assert peer.answer(sid)[b"grpc-status"] == str(int(StatusCode.UNAVAILABLE)).encode()


def test_no_thread_to_run_a_call_is_unavailable() -> None:
    peer = Peer()
    sid = peer.request()
    [call] = peer.send()
    peer.server.busy(call)
    peer.read()
    assert peer.answer(sid)[b"grpc-status"] == str(int(StatusCode.UNAVAILABLE)).encode()
    assert call.status is not None and call.status[0] == StatusCode.UNAVAILABLE


def test_streams_over_the_advertised_limit_are_refused_alone() -> None:
    peer = Peer(Limits(max_concurrent_streams=2))
    peer.client.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].appendleft(100)
    sids = [peer.request(end=False) for _ in range(3)]
    peer.send()
    peer.read()
    assert peer.answer(sids[2])[b"reset"] == str(int(h2.errors.ErrorCodes.REFUSED_STREAM)).encode()
    assert list(peer.server.calls) == sids[:2]


def test_one_ending_per_call_whatever_comes_after() -> None:
    """Once ended, a call stays ended with its first status: later endings change nothing."""
    peer = Peer()
    sid = peer.request()
    [call] = peer.send()
    peer.server.finish(call, StatusCode.ABORTED, "first")
    peer.server.finish(call, StatusCode.INTERNAL, "second")
    peer.server.busy(call)
    peer.server.lose("gone")
    assert call.status == (StatusCode.ABORTED, "first")
    peer.read()
    assert peer.answer(sid)[b"grpc-message"] == b"first"


@pytest.mark.parametrize("path", [ECHO, WATCH])
def test_unary_and_streaming_methods_are_told_apart(path: str) -> None:
    methods = [
        unary(ECHO, lambda r, c: r, BytesValue),
        server_streaming(WATCH, lambda r, s: None, StringValue),
    ]
    client = MemoryClient(methods)
    client.call(path, grpc_frame(b""))
    assert [c.unary for c in client.streams] == ([] if path == ECHO else [False])


def test_the_test_client_headers_match_grpcio() -> None:
    """The MemoryClient sends what the socket tests send: one helper, two transports."""
    assert dict(request_headers(ECHO))[":path"] == ECHO
