"""Logs under attack (issue 12): peer values are cut, storms are summed up, not one line each."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable

from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from sdplite.wire import Channel, GrpcError, StatusCode

from conftest import wait_until
from echo_service import ECHO, RAISE, Hub, serve_sdplite
from raw_h2 import RawClient, grpc_frame, request_headers


def test_a_storm_over_max_connections_is_one_line_and_one_count(
    sock_dir: str, caplog: Any, baseline: Callable[[], None]
) -> None:
    caplog.set_level(logging.WARNING, logger="sdplite.wire")
    path = os.path.join(sock_dir, "s.sock")
    server = serve_sdplite(path, Hub(), max_connections=2)
    held = [Channel(path) for _ in range(2)]
    try:
        wait_until(lambda: server.connection_count == 2, what="two connections")
        for _ in range(136):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
                sock.settimeout(10)
                assert sock.recv(1) == b""  # refused: closed at once
        refused = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
        assert len(refused) == 1, refused
        assert "already 2 connections (max_connections)" in refused[0]
        # The server keeps serving the connections it has.
        assert held[0].unary(ECHO, BytesValue(value=b"x"), BytesValue).value == b"x"
    finally:
        for channel in held:
            channel.close()
        server.stop(0)
    summaries = [r.getMessage() for r in caplog.records if "in the last" in r.getMessage()]
    assert len(summaries) == 1, summaries
    assert "refused 136 connections over max_connections (2) in the last" in summaries[0]
    baseline()


def test_a_handler_error_holding_a_peer_value_is_cut(sock_dir: str, caplog: Any) -> None:
    """A long peer value echoed into an exception: the caller gets it, the log line does not."""
    caplog.set_level(logging.ERROR, logger="sdplite.wire")
    path = os.path.join(sock_dir, "s.sock")
    server = serve_sdplite(path, Hub())
    try:
        with Channel(path) as channel:
            try:
                channel.unary(RAISE, StringValue(value="d" * 8000), StringValue)
            except GrpcError as exc:
                assert exc.code == StatusCode.UNKNOWN
            else:
                raise AssertionError("the call should have failed")
    finally:
        server.stop(0)
    lines = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert len(lines) == 1
    assert "(8012 characters)" in lines[0]  # "ValueError: " and the value
    assert "raise ValueError(request.value)" in lines[0]  # the traceback stays
    assert all(len(r.getMessage()) < 4000 and not r.exc_info for r in caplog.records)


def test_malformed_requests_on_one_connection_are_one_line_and_one_count(sock_dir: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="sdplite.wire")
    path = os.path.join(sock_dir, "s.sock")
    server = serve_sdplite(path, Hub())
    client = RawClient(path)
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    try:
        for _ in range(20):
            sid = client.h2.get_next_available_stream_id()
            headers = [(k.encode(), v.encode()) for k, v in request_headers(ECHO)]
            client.h2.send_headers(sid, headers + [(b"X-" + b"N" * 1000, b"v")])  # upper case: malformed
            client.h2.send_data(sid, grpc_frame(b""), end_stream=True)
            client.flush()
            assert client.status(sid)[0] < 0  # reset
        lines = [r.getMessage() for r in caplog.records if "malformed request" in r.getMessage()]
        assert len(lines) == 1 and len(lines[0]) < 1000, lines
    finally:
        client.close()
        wait_until(lambda: server.connection_count == 0, what="the connection to close")
        server.stop(0)
    summaries = [r.getMessage() for r in caplog.records if "malformed requests in the last" in r.getMessage()]
    assert len(summaries) == 1 and ": 20 malformed requests" in summaries[0], summaries
