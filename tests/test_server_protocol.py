"""Our server at the HTTP/2 level, driven frame by frame by a hand-made h2 client."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h2.events
import h2.settings
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, DoubleValue, StringValue

from sdplite.wire import Channel, GrpcError, Server, StatusCode, unary

from conftest import wait_until
from echo_service import ECHO, HANG, WATCH, Hub, serve_sdplite
from raw_h2 import RawClient, grpc_frame, request_headers

REMAINING = "/test.Deadline/Remaining"


@pytest.fixture
def served(sock_dir: str) -> Iterator[tuple[str, Hub, Server]]:
    path = os.path.join(sock_dir, "p.sock")
    hub = Hub()
    server = serve_sdplite(path, hub)
    yield path, hub, server
    server.stop(0)


def test_settings_go_out_before_the_client_says_anything(served: Any) -> None:
    """The server's SETTINGS frame is sent on accept (grpc-go's blocking dial waits for it)."""
    path, _, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        header = sock.recv(9, socket.MSG_WAITALL)
    assert header[3] == 0x4, "first frame is not SETTINGS"
    assert header[4] & 0x1 == 0, "first SETTINGS must not be an ACK"


def test_ping_is_acknowledged_with_its_payload(served: Any) -> None:
    """PINGs (grpc-go's BDP pings) are answered with the same 8 bytes."""
    client = RawClient(served[0])
    client.h2.ping(b"\x02\x04\x10\x10\x09\x0e\x07\x07")
    client.flush()
    ack = client.read_until(lambda e: isinstance(e, h2.events.PingAckReceived))
    assert ack.ping_data == b"\x02\x04\x10\x10\x09\x0e\x07\x07"


def test_compressed_message_is_internal(served: Any) -> None:
    """A message flagged compressed, with no grpc-encoding, is refused with INTERNAL."""
    client = RawClient(served[0])
    sid = client.call(ECHO, grpc_frame(b"", compressed=True))
    code, message = client.status(sid)
    assert code == StatusCode.INTERNAL and "compressed" in message


def test_unsupported_grpc_encoding_is_unimplemented(served: Any) -> None:
    client = RawClient(served[0])
    sid = client.call(ECHO, grpc_frame(b""), grpc_encoding="gzip")
    assert client.status(sid)[0] == StatusCode.UNIMPLEMENTED


def test_undecodable_protobuf_is_internal_and_the_connection_survives(served: Any) -> None:
    """Garbage where a protobuf should be is INTERNAL; the same connection keeps serving."""
    client = RawClient(served[0])
    sid = client.call(ECHO, grpc_frame(b"\xff\xff\xff\xff"))
    code, message = client.status(sid)
    assert code == StatusCode.INTERNAL and "decode" in message
    sid = client.call(ECHO, grpc_frame(BytesValue(value=b"ok").SerializeToString()))
    assert client.status(sid)[0] == StatusCode.OK


def test_length_prefix_over_the_limit_is_refused_before_the_body(served: Any) -> None:
    """A prefix announcing more than the limit is RESOURCE_EXHAUSTED with no body sent."""
    client = RawClient(served[0])
    sid = client.call(ECHO, b"\x00\xff\xff\xff\xff", end=False)
    code, message = client.status(sid)
    assert code == StatusCode.RESOURCE_EXHAUSTED and "4294967295" in message


def test_two_request_messages_for_a_unary_method_is_an_error(served: Any) -> None:
    client = RawClient(served[0])
    sid = client.call(ECHO, grpc_frame(b"") + grpc_frame(b""))
    assert client.status(sid)[0] == StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "header,seconds",
    [
        ("1H", 3600),
        ("2M", 120),
        ("30S", 30),
        ("30000m", 30),
        ("29999995u", 29.999995),
        ("99999999n", 0.099999999),
    ],
)
def test_grpc_timeout_in_every_unit_becomes_the_handler_deadline(
    sock_dir: str, header: str, seconds: float
) -> None:
    """Each of the six units gives the handler a deadline no later than the timeout."""
    seen: list[float] = []

    def remaining(request: Any, context: Any) -> DoubleValue:
        seen.append(context.time_remaining())
        return DoubleValue(value=seen[-1])

    with Server(os.path.join(sock_dir, "d.sock"), [unary(REMAINING, remaining, DoubleValue)]) as server:
        client = RawClient(server.path)
        sid = client.call(REMAINING, grpc_frame(b""), grpc_timeout=header)
        assert client.status(sid)[0] == StatusCode.OK
    assert 0 < seen[0] <= seconds
    assert seconds - seen[0] < 5, "the deadline is far earlier than the timeout asked for"


def test_handler_without_grpc_timeout_has_no_deadline(sock_dir: str) -> None:
    seen: list[Any] = []

    def remaining(request: Any, context: Any) -> DoubleValue:
        seen.append(context.time_remaining())
        return DoubleValue()

    with Server(os.path.join(sock_dir, "d.sock"), [unary(REMAINING, remaining, DoubleValue)]) as server:
        with Channel(server.path) as channel:
            channel.unary(REMAINING, DoubleValue(), DoubleValue)
    assert seen == [None]


def test_malformed_grpc_timeout_is_internal(served: Any) -> None:
    client = RawClient(served[0])
    sid = client.call(ECHO, grpc_frame(b""), grpc_timeout="12X")
    assert client.status(sid)[0] == StatusCode.INTERNAL


def test_non_post_and_wrong_content_type_are_refused(served: Any) -> None:
    client = RawClient(served[0])
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        sid,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", ECHO),
            (":authority", "x"),
            ("content-type", "application/grpc"),
        ],
        end_stream=True,
    )
    client.flush()
    assert client.status(sid)[0] == StatusCode.INTERNAL
    sid = client.call(ECHO, grpc_frame(b""), content_type="text/plain")
    assert client.status(sid)[0] == StatusCode.INVALID_ARGUMENT


def test_any_authority_is_accepted(served: Any) -> None:
    """Old kubelets send the socket path as :authority; it must not matter."""
    client = RawClient(served[0])
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", ECHO),
            (":authority", "/var/lib/kubelet/device-plugins/x.sock"),
            ("content-type", "application/grpc+proto"),
        ],
    )
    client.h2.send_data(sid, grpc_frame(b""), end_stream=True)
    client.flush()
    assert client.status(sid)[0] == StatusCode.OK


def test_reset_cancels_that_stream_only(served: Any) -> None:
    """RST_STREAM cancels its own stream's handler; the other stream and the connection go on."""
    path, hub, _ = served
    client = RawClient(path)
    first = client.call(HANG, grpc_frame(StringValue(value="one").SerializeToString()))
    second = client.call(HANG, grpc_frame(StringValue(value="two").SerializeToString()))
    assert hub.event(hub.watching, "one").wait(10) and hub.event(hub.watching, "two").wait(10)
    client.h2.reset_stream(first, 8)
    client.flush()
    assert hub.event(hub.cancelled, "one").wait(10), "the reset stream's handler was not cancelled"
    sid = client.call(ECHO, grpc_frame(b""))
    assert client.status(sid)[0] == StatusCode.OK
    assert not hub.event(hub.cancelled, "two").is_set()
    client.h2.reset_stream(second, 8)
    client.flush()
    assert hub.event(hub.cancelled, "two").wait(10)


@pytest.mark.parametrize("how", ["eof", "goaway"])
def test_losing_a_connection_cancels_its_streams_and_nothing_else(served: Any, how: str) -> None:
    """EOF or GOAWAY cancels every stream of that connection; other connections keep theirs."""
    path, hub, _ = served
    doomed = RawClient(path)
    for name in ("a1", "a2"):
        doomed.call(WATCH, grpc_frame(StringValue(value=name).SerializeToString()))
    with Channel(path) as other:
        survivor = other.server_streaming(WATCH, StringValue(value="b"), StringValue)
        for name in ("a1", "a2", "b"):
            assert hub.event(hub.watching, name).wait(10)
        if how == "eof":
            doomed.close()
        else:
            doomed.h2.close_connection()
            doomed.flush()
        assert hub.event(hub.cancelled, "a1").wait(10) and hub.event(hub.cancelled, "a2").wait(10)
        hub.publish("b", "still here")
        assert next(survivor).value == "still here"
        assert not hub.event(hub.cancelled, "b").is_set()
        survivor.cancel()


def test_sender_respects_a_tiny_window_and_a_settings_change_mid_stream(served: Any) -> None:
    """With a 1000-byte stream window the server stops at 1000 bytes; raising
    SETTINGS_INITIAL_WINDOW_SIZE mid-response lets the rest through. h2 on our
    side raises if any frame exceeds the window or the 16 KiB frame size."""
    client = RawClient(served[0], settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    payload = os.urandom(60_000)  # the request must fit our default 64 KiB send window
    sid = client.call(ECHO, grpc_frame(BytesValue(value=payload).SerializeToString()))
    received = bytearray()

    def take(event: Any) -> bool:
        if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
            received.extend(event.data)
        return len(received) >= 1000

    client.read_until(take)
    assert len(received) == 1000, "the server sent past the stream window"
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1_000_000})
    client.h2.increment_flow_control_window(1_000_000)
    client.flush()
    ended: list[Any] = []

    def finish(event: Any) -> bool:
        if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
            received.extend(event.data)
            client.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            client.flush()
        if isinstance(event, h2.events.TrailersReceived):
            ended.append(dict(event.headers))
        return bool(ended)

    client.read_until(finish)
    assert ended[0]["grpc-status"] == "0"
    assert BytesValue.FromString(bytes(received[5:])).value == payload


def test_a_lone_unary_call_runs_on_the_reading_thread_unless_told_not_to(sock_dir: str) -> None:
    """No thread switch for a lone call; ``handoff_after=None`` sends every call to a worker."""
    seen: list[str] = []

    def where(request: BytesValue, context: Any) -> BytesValue:
        seen.append(threading.current_thread().name)
        return request

    for handoff_after in (0.005, None):
        path = os.path.join(sock_dir, f"t{handoff_after}.sock")
        server = Server(path, [unary(ECHO, where, BytesValue)], handoff_after=handoff_after)
        server.start()
        try:
            with Channel(path) as channel:
                channel.unary(ECHO, BytesValue(value=b"x"), BytesValue)
        finally:
            server.stop(0)
    assert seen[0].startswith("sdplite-conn-") and seen[1].startswith("sdplite-worker-")


def test_calls_read_together_behind_a_hung_one_are_still_answered(served: Any) -> None:
    """A hung call and an echo arrive in one write: the echo is answered while the first hangs."""
    path, hub, _ = served
    client = RawClient(path)
    hung, echo = (client.h2.get_next_available_stream_id() + n * 2 for n in range(2))
    for sid, method, body in ((hung, HANG, StringValue(value="first")), (echo, ECHO, BytesValue(value=b"y"))):
        client.h2.send_headers(sid, request_headers(method))
        client.h2.send_data(sid, grpc_frame(body.SerializeToString()), end_stream=True)
    client.flush()  # one write, so the server reads both at once
    assert client.status(echo)[0] == StatusCode.OK
    assert not hub.event(hub.cancelled, "first").is_set()
    client.h2.reset_stream(hung)
    client.flush()
    assert hub.event(hub.cancelled, "first").wait(10)
    client.close()


def test_reading_moves_on_again_when_the_next_reader_hangs_too(sock_dir: str) -> None:
    """Two calls hang one after the other, each on the thread reading at the time, and the first
    one ends: the connection is still read, and a third call is answered."""
    gates = {"one": threading.Event(), "two": threading.Event()}
    entered = {"one": threading.Event(), "two": threading.Event()}

    def block(request: StringValue, context: Any) -> StringValue:
        entered[request.value].set()
        gates[request.value].wait(30)
        return request

    path = os.path.join(sock_dir, "b.sock")
    server = Server(path, [unary(HANG, block, StringValue), unary(ECHO, lambda r, c: r, BytesValue)])
    server.start()
    try:
        with Channel(path) as channel:
            callers = []
            for name in ("one", "two"):
                caller = threading.Thread(
                    target=channel.unary, args=(HANG, StringValue(value=name), StringValue)
                )
                caller.start()
                callers.append(caller)
                assert entered[name].wait(10)
            gates["one"].set()  # the first reader's call ends while the second one's hangs
            callers[0].join(10)
            for _ in range(5):
                assert channel.unary(ECHO, BytesValue(value=b"z"), BytesValue, timeout=10).value == b"z"
            gates["two"].set()
            callers[1].join(10)
    finally:
        for gate in gates.values():
            gate.set()
        server.stop(0)


@pytest.mark.parametrize("handoff_after", [0.005, None], ids=["reader-runs-calls", "workers-only"])
def test_a_slow_handler_does_not_block_its_connection(sock_dir: str, handoff_after: Any) -> None:
    """A handler that never returns leaves the rest of its connection fully served."""
    path = os.path.join(sock_dir, "p.sock")
    hub = Hub()
    server = serve_sdplite(path, hub, handoff_after=handoff_after)
    try:
        _slow_handler_leaves_the_connection_served(path, hub)
    finally:
        server.stop(0)


def _slow_handler_leaves_the_connection_served(path: str, hub: Hub) -> None:
    with Channel(path) as channel:
        failures: list[BaseException] = []

        def hang() -> None:
            try:
                channel.unary(HANG, StringValue(value="stuck"), StringValue, timeout=30)
            except GrpcError as exc:
                failures.append(exc)

        thread = threading.Thread(target=hang)
        thread.start()
        assert hub.event(hub.watching, "stuck").wait(10)
        for _ in range(20):
            assert channel.unary(ECHO, BytesValue(value=b"x"), BytesValue).value == b"x"
        channel.close()
        thread.join(10)
        assert hub.event(hub.cancelled, "stuck").wait(10)


def test_graceful_stop_ends_streams_with_a_status_and_removes_the_socket(served: Any) -> None:
    path, hub, server = served
    channel = Channel(path)
    stream = channel.server_streaming(WATCH, StringValue(value="greet:s"), StringValue)
    assert next(stream).value == "hello"
    server.stop(grace=5)
    with pytest.raises(GrpcError) as info:
        next(stream)
    assert info.value.code == StatusCode.UNAVAILABLE
    assert "shutting down" in info.value.message
    assert not os.path.exists(path)
    channel.close()


def test_immediate_stop_fails_calls_in_progress(served: Any) -> None:
    path, hub, server = served
    channel = Channel(path)
    errors: list[GrpcError] = []

    def hang() -> None:
        try:
            channel.unary(HANG, StringValue(value="h"), StringValue)
        except GrpcError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    assert hub.event(hub.watching, "h").wait(10)
    server.stop(grace=0)
    thread.join(10)
    assert errors and errors[0].code == StatusCode.UNAVAILABLE
    assert hub.event(hub.cancelled, "h").wait(10)
    assert not os.path.exists(path)
    wait_until(lambda: channel.closed, what="the client to see the connection close")
    channel.close()
