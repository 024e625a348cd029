"""Our transport against grpcio, both ways: every case runs for each client/server pair.

Pairs: grpcio client -> sdplite server, sdplite client -> grpcio server, and
sdplite -> sdplite. grpcio is a real gRPC implementation we did not write.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from sdplite.wire import StatusCode

from conftest import Pair, wait_until
from echo_service import ECHO, FAIL, HANG, RAISE, WATCH, CallError

MiB = 1024 * 1024


def test_unary_call_returns_the_response(pair: Pair) -> None:
    """A unary call returns the server's response intact."""
    client = pair.client()
    assert client.unary(ECHO, BytesValue(value=b"ping"), BytesValue).value == b"ping"


@pytest.mark.parametrize("size", [1 * MiB, int(3.9 * MiB)], ids=["1MiB", "3.9MiB"])
def test_large_messages_cross_in_both_directions(pair: Pair, size: int) -> None:
    """Messages far larger than the 64 KiB initial windows go through whole."""
    client = pair.client()
    payload = bytes(range(256)) * (size // 256)
    assert client.unary(ECHO, BytesValue(value=payload), BytesValue).value == payload


def test_request_over_the_receive_limit_is_resource_exhausted(pair: Pair) -> None:
    """A request larger than the server's 4 MiB receive limit fails with RESOURCE_EXHAUSTED."""
    client = pair.client()
    with pytest.raises(CallError) as info:
        client.unary(ECHO, BytesValue(value=b"x" * (4 * MiB + 1)), BytesValue)
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
    # ... and the connection keeps serving.
    assert client.unary(ECHO, BytesValue(value=b"after"), BytesValue).value == b"after"


def test_unknown_method_is_unimplemented(pair: Pair) -> None:
    """Calling a method or service nobody serves fails with UNIMPLEMENTED."""
    client = pair.client()
    for path in ("/test.Echo/Nope", "/no.Such/Service"):
        with pytest.raises(CallError) as info:
            client.unary(path, BytesValue(), BytesValue)
        assert info.value.code == StatusCode.UNIMPLEMENTED


def test_status_error_keeps_code_and_non_ascii_message(pair: Pair) -> None:
    """A handler's status error reaches the caller with its code and exact unicode message."""
    client = pair.client()
    message = "périphérique «gpu-0» indisponible: 100% occupé ✗ 设备"
    with pytest.raises(CallError) as info:
        client.unary(FAIL, StringValue(value=f"FAILED_PRECONDITION:{message}"), StringValue)
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert info.value.message == message


def test_handler_exception_is_unknown_with_its_text(pair: Pair) -> None:
    """A handler that raises gives UNKNOWN with the exception's text; the server keeps serving."""
    client = pair.client()
    with pytest.raises(CallError) as info:
        client.unary(RAISE, StringValue(value="disk on fire"), StringValue)
    assert info.value.code == StatusCode.UNKNOWN
    if pair.server_kind == "sdplite":
        assert info.value.message == "ValueError: disk on fire"
    assert client.unary(ECHO, BytesValue(value=b"ok"), BytesValue).value == b"ok"


def test_deadline_cancels_the_handler(pair: Pair) -> None:
    """Past its deadline a call fails with DEADLINE_EXCEEDED and the handler is cancelled."""
    client = pair.client()
    with pytest.raises(CallError) as info:
        client.unary(HANG, StringValue(value="slow"), StringValue, timeout=0.3)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert pair.hub.event(pair.hub.cancelled, "slow").wait(10), "handler never saw the cancellation"


def test_stream_delivers_every_update_in_order_then_ends(pair: Pair) -> None:
    """A server stream sends each published update, in order, and ends cleanly."""
    client = pair.client()
    stream = client.stream(WATCH, StringValue(value="w"), StringValue)
    assert pair.hub.event(pair.hub.watching, "w").wait(10)
    for i in range(100):
        pair.hub.publish("w", f"update-{i}")
    assert [next(stream).value for _ in range(100)] == [f"update-{i}" for i in range(100)]
    pair.hub.end("w")
    with pytest.raises(StopIteration):
        next(stream)


def test_cancelled_stream_is_cancelled_on_the_server(pair: Pair) -> None:
    """Cancelling a stream ends it for the caller (CANCELLED) and wakes the server side."""
    client = pair.client()
    stream = client.stream(WATCH, StringValue(value="c"), StringValue)
    assert pair.hub.event(pair.hub.watching, "c").wait(10)
    pair.hub.publish("c", "first")
    assert next(stream).value == "first"
    stream.cancel()
    with pytest.raises(CallError) as info:
        next(stream)
    assert info.value.code == StatusCode.CANCELLED
    assert pair.hub.event(pair.hub.cancelled, "c").wait(10), "server never saw the cancellation"
    wait_until(lambda: not pair.hub.watchers.get("c"), what="the watcher to be dropped")
    assert client.unary(ECHO, BytesValue(value=b"still"), BytesValue).value == b"still"


def test_stream_deadline(pair: Pair) -> None:
    """A stream with a deadline ends with DEADLINE_EXCEEDED once it passes."""
    client = pair.client()
    stream = client.stream(WATCH, StringValue(value="d"), StringValue, timeout=0.5)
    assert pair.hub.event(pair.hub.watching, "d").wait(10)
    pair.hub.publish("d", "one")
    assert next(stream).value == "one"
    with pytest.raises(CallError) as info:
        next(stream)
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert pair.hub.event(pair.hub.cancelled, "d").wait(10)


@pytest.mark.parametrize("shared", [True, False], ids=["one-connection", "connection-per-thread"])
def test_concurrent_unary_calls_beside_a_live_stream(pair: Pair, shared: bool) -> None:
    """8 threads x 500 calls, while a stream on the first connection pushes 200 updates.

    Every call gets its own answer and every update arrives, in order.
    """
    first = pair.client()
    clients = [first] * 8 if shared else [first] + [pair.client() for _ in range(7)]
    stream = first.stream(WATCH, StringValue(value="live"), StringValue)
    assert pair.hub.event(pair.hub.watching, "live").wait(10)
    received: list[str] = []
    errors: list[BaseException] = []

    def read_updates() -> None:
        try:
            for _ in range(200):
                received.append(next(stream).value)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def publish() -> None:
        for i in range(200):
            pair.hub.publish("live", str(i))

    def calls(n: int, client: Any) -> None:
        try:
            for i in range(500):
                body = f"{n}:{i}".encode()
                answer = client.unary(ECHO, BytesValue(value=body), BytesValue).value
                assert answer == body, (answer, body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_updates), threading.Thread(target=publish)]
    threads += [threading.Thread(target=calls, args=(n, clients[n])) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert received == [str(i) for i in range(200)]
    stream.cancel()
