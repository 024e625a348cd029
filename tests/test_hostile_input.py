"""Hostile and broken peers: the offender is refused precisely, everyone else keeps being served.

Generated cases (hypothesis) throw random bytes, random frames, broken HPACK
and broken gRPC framing at the server; hand-written cases pin down each
HTTP/2 rule. Random frames, broken framing and protobuf garbage go to the
server's call handling in memory (bytes in, bytes out, no socket, no thread:
a bug there raises straight into the test); random bytes and broken HPACK go
to a live server. After each group, the live server still answers a normal
call on a fresh connection and its threads and fds are back to their
baseline.

Example counts scale with SDPLITE_FUZZ_SCALE (default 1: about 3,300
generated cases; the long run in docs/reliability.md uses 20).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Callable

import h2.events
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, StringValue
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdplite.wire import Channel, GrpcError, Server, StatusCode
from sdplite.wire.server_protocol import Limits

from conftest import fd_count, thread_count, wait_until
from echo_service import ECHO, WATCH, Hub, sdplite_methods, serve_sdplite
from raw_h2 import MemoryClient, RawClient, grpc_frame, request_headers

SCALE = int(os.environ.get("SDPLITE_FUZZ_SCALE", "1"))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FUZZ = settings(
    max_examples=600 * SCALE,
    deadline=None,
    derandomize=SCALE == 1,  # CI runs the same cases every time; long runs explore
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


class Target:
    """A live echo server with small limits, and its resource baseline."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "h.sock")
        self.hub = Hub()
        self.server: Server = serve_sdplite(
            self.path, self.hub, max_concurrent_streams=10, worker_idle_timeout=0.1, max_connections=32
        )
        self.threads, self.fds = thread_count(), fd_count()

    def blast(self, data: bytes, read: bool = True) -> bytes:
        """Send raw bytes on a fresh connection; return what came back before EOF or 2 s."""
        received = bytearray()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(self.path)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while read:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except (socket.timeout, ConnectionError):
                pass
        return bytes(received)

    def assert_healthy(self) -> None:
        """A normal call works and nothing leaked."""
        with Channel(self.path) as channel:
            assert channel.unary(ECHO, BytesValue(value=b"ok"), BytesValue).value == b"ok"
        wait_until(lambda: self.server.connection_count == 0, what="connections to close")
        wait_until(
            lambda: thread_count() <= self.threads and fd_count() <= self.fds,
            what=f"threads {thread_count()}->{self.threads}, fds {fd_count()}->{self.fds}",
        )


#: The live Target's limits, for the server's call handling in memory.
LIMITS = Limits(max_concurrent_streams=10)


def memory_client(preface: bool = True) -> MemoryClient:
    return MemoryClient(sdplite_methods(Hub()), LIMITS, preface=preface)


def memory_blast(data: bytes) -> bytes:
    """What the server's call handling answers to ``data`` before the peer hangs up."""
    client = memory_client(preface=False)
    client.send_bytes(data)
    reply = client.receive_bytes()
    client.close()
    return reply


@pytest.fixture
def target(sock_dir: str) -> Iterator[Target]:
    t = Target(sock_dir)
    yield t
    t.server.stop(0)


def frames_in(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each whole frame in ``data``."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


def goaway_code(data: bytes) -> int:
    codes = [struct.unpack(">II", p[:8])[1] for t, _, _, p in frames_in(data) if t == 0x7]
    assert codes, f"no GOAWAY in {frames_in(data)}"
    return codes[-1]


def settings_frame() -> bytes:
    return SettingsFrame(0).serialize()


def headers_block(path: str = ECHO, end_stream: bool = False) -> bytes:
    import hpack

    frame = HeadersFrame(1)
    frame.data = hpack.Encoder().encode(request_headers(path))
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


# -- generated cases -----------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_instead_of_a_preface(target: Target, data: bytes) -> None:
    """Anything that is not the HTTP/2 preface gets at most a GOAWAY, then the close."""
    reply = target.blast(data)
    if not PREFACE.startswith(data[: len(PREFACE)]) or len(data) < len(PREFACE):
        assert all(t in (0x4, 0x7, 0x8) for t, *_ in frames_in(reply))  # SETTINGS, GOAWAY, WINDOW_UPDATE


@FUZZ
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=64)),
        max_size=6,
    )
)
def test_random_frames_after_a_valid_preface(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Random frame types, flags, stream IDs and payloads never hurt the server (in memory)."""
    data = PREFACE + settings_frame()
    for kind, flags, stream, payload in frames:
        data += len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    reply = memory_blast(data)
    assert frames_in(reply)[0][0] == 0x4, "SETTINGS must come first"


@FUZZ
@given(block=st.binary(min_size=1, max_size=200))
def test_invalid_hpack_is_a_compression_or_protocol_error(target: Target, block: bytes) -> None:
    """A header block HPACK cannot decode costs the connection a GOAWAY (COMPRESSION_ERROR or
    PROTOCOL_ERROR). One that decodes is an ordinary (odd) request: the server may answer or
    refuse it, or see it cancelled when this peer hangs up straight after sending it."""
    import hpack

    frame = HeadersFrame(1)
    frame.data = block
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    reply = target.blast(PREFACE + settings_frame() + frame.serialize())
    try:
        hpack.Decoder().decode(block, raw=True)
    except Exception:
        assert goaway_code(reply) in (0x1, 0x9)


@FUZZ
@given(prefix=st.binary(min_size=5, max_size=5), body=st.binary(max_size=64))
def test_bad_grpc_framing_gets_a_status_on_that_stream(prefix: bytes, body: bytes) -> None:
    """Wrong lengths, compressed flags, garbage bodies: a gRPC status ends the stream, not the connection."""
    client = memory_client()
    try:
        sid = client.call(ECHO, prefix + body, end=True)
        code, _ = client.status(sid)
        assert code in (
            StatusCode.OK,
            StatusCode.INTERNAL,
            StatusCode.RESOURCE_EXHAUSTED,
            StatusCode.UNIMPLEMENTED,
        )
        sid = client.call(ECHO, grpc_frame(BytesValue(value=b"next").SerializeToString()))
        assert client.status(sid)[0] == StatusCode.OK
    finally:
        client.close()


@FUZZ
@given(garbage=st.binary(max_size=256))
def test_protobuf_garbage_is_internal_or_parses(garbage: bytes) -> None:
    client = memory_client()
    try:
        code, message = client.status(client.call(ECHO, grpc_frame(garbage)))
        try:
            BytesValue.FromString(garbage)
            assert code == StatusCode.OK
        except Exception:
            assert code == StatusCode.INTERNAL and "decode" in message
    finally:
        client.close()


def test_after_the_generated_cases_nothing_leaked(target: Target) -> None:
    """Run last in this file's group by name order; also proves the fixture's check works alone."""
    target.blast(os.urandom(1000))
    target.assert_healthy()


# -- hand-written cases --------------------------------------------------------------


def test_an_oversized_frame_is_refused_from_its_header_alone(target: Target) -> None:
    """A frame declaring 16 MiB is refused with FRAME_SIZE_ERROR before any of its body is sent."""
    header = (2**24 - 1).to_bytes(3, "big") + bytes([0x0, 0x0]) + (1).to_bytes(4, "big")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(target.path)
        sock.sendall(PREFACE + settings_frame() + headers_block() + header)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert goaway_code(reply) == 0x6  # FRAME_SIZE_ERROR
    target.assert_healthy()


def test_window_update_with_the_reserved_bit_is_accepted(target: Target) -> None:
    """RFC 9113 6.9: the reserved bit is ignored; the connection goes on."""
    client = RawClient(target.path)
    raw = WindowUpdateFrame(0)
    raw.window_increment = 1000
    data = bytearray(raw.serialize())
    data[9] |= 0x80
    client.sock.sendall(bytes(data))
    sid = client.call(ECHO, grpc_frame(b""))
    assert client.status(sid)[0] == StatusCode.OK
    client.close()


def test_streams_over_the_limit_are_refused_one_by_one(target: Target) -> None:
    """With 10 streams allowed, the 11th gets REFUSED_STREAM and the first 10 still complete."""
    client = RawClient(target.path)
    client.ignore_stream_limit()
    sids = [client.call(ECHO, b"", end=False) for _ in range(11)]
    reset = client.read_until(lambda e: isinstance(e, h2.events.StreamReset))
    assert (reset.stream_id, reset.error_code) == (sids[10], 7)  # REFUSED_STREAM
    for sid in sids[:10]:
        client.h2.send_data(sid, grpc_frame(b""), end_stream=True)
    client.flush()
    assert [client.status(sid)[0] for sid in sids[:10]] == [StatusCode.OK] * 10
    client.close()


def test_thousands_of_streams_on_one_connection(target: Target) -> None:
    with Channel(target.path) as channel:
        for i in range(3000):
            assert channel.unary(ECHO, BytesValue(value=b"%d" % i), BytesValue).value == b"%d" % i
    target.assert_healthy()


def test_a_huge_header_list_is_refused(target: Target) -> None:
    """A header list over the advertised 16 KiB limit: GOAWAY(ENHANCE_YOUR_CALM), nobody else affected."""
    client = RawClient(target.path)
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, request_headers(ECHO) + [(f"x-pad-{i}", "v" * 1000) for i in range(40)])
    client.flush()
    with pytest.raises(ConnectionError):
        client.read_until(lambda e: False)
    ended = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == 0xB  # ENHANCE_YOUR_CALM
    client.close()
    target.assert_healthy()


def test_headers_on_a_closed_stream_are_a_stream_or_connection_error(target: Target) -> None:
    client = RawClient(target.path)
    sid = client.call(ECHO, grpc_frame(b""))
    assert client.status(sid)[0] == StatusCode.OK
    frame = HeadersFrame(sid)
    frame.data = b"\x82"  # :method GET, a valid HPACK index
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    client.sock.sendall(frame.serialize())
    with pytest.raises((ConnectionError, socket.timeout)):
        client.read_until(lambda e: False)
    assert any(isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated)) for e in client.events)
    client.close()
    target.assert_healthy()


def test_data_beyond_the_window_is_a_flow_control_error(sock_dir: str) -> None:
    """A DATA frame larger than the advertised stream window is refused with FLOW_CONTROL_ERROR."""
    path = os.path.join(sock_dir, "w.sock")
    with serve_sdplite(path, Hub(), stream_window=1000):
        client = RawClient(path)
        client.read_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        sid = client.call(ECHO, b"", end=False)
        frame = DataFrame(sid)
        frame.data = b"\0" * 16384  # the window is 1000
        client.sock.sendall(frame.serialize())
        with pytest.raises((ConnectionError, socket.timeout)):
            client.read_until(lambda e: False)
        ended = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
        assert ended and ended[0].error_code == 0x3  # FLOW_CONTROL_ERROR
        client.close()
        with Channel(path) as channel:
            assert channel.unary(ECHO, BytesValue(value=b"ok"), BytesValue).value == b"ok"


def test_idle_streams_never_starve_a_call(target: Target) -> None:
    """45 open watches and 9 requests that never finish do not delay a call on the same connections.

    (A grpcio plugin with its usual pool of 10 threads is starved by 9 such streams.)
    """
    client = RawClient(target.path)
    watchers = [Channel(target.path) for _ in range(5)]  # the server allows 10 streams per connection
    try:
        watches = [
            w.server_streaming(WATCH, StringValue(value=f"greet:{n}.{i}"), StringValue)
            for n, w in enumerate(watchers)
            for i in range(9)
        ]
        for stream in watches:
            assert next(stream).value == "hello"
        idle = [client.call(ECHO, b"\x00\x00\x00", end=False) for _ in range(9)]  # half a prefix, forever
        sid = client.call(ECHO, grpc_frame(BytesValue(value=b"urgent").SerializeToString()))
        assert client.status(sid)[0] == StatusCode.OK
        for w in watchers:
            assert w.unary(ECHO, BytesValue(value=b"me too"), BytesValue).value == b"me too"
        assert len(idle) == 9
    finally:
        for w in watchers:
            w.close()
        client.close()
    target.assert_healthy()


def test_connections_over_the_limit_are_closed(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "few.sock")
    with serve_sdplite(path, Hub(), max_connections=2) as server:
        first, second = Channel(path), Channel(path)
        wait_until(lambda: server.connection_count == 2, what="two connections")
        with pytest.raises(GrpcError) as info:
            Channel(path, connect_timeout=5)
        assert info.value.code == StatusCode.UNAVAILABLE
        first.close()
        wait_until(lambda: server.connection_count == 1, what="a free slot")
        with Channel(path) as third:
            assert third.unary(ECHO, BytesValue(value=b"in"), BytesValue).value == b"in"
        second.close()


def test_peer_credentials_are_checked(sock_dir: str) -> None:
    """Only allowed UIDs may connect; others are closed (and logged)."""
    path = os.path.join(sock_dir, "uid.sock")
    with serve_sdplite(path, Hub(), allowed_uids=[os.getuid() + 12345]):
        with pytest.raises(GrpcError):
            Channel(path, connect_timeout=5)
    with serve_sdplite(path, Hub(), allowed_uids=[os.getuid()]):
        with Channel(path) as channel:
            assert channel.unary(ECHO, BytesValue(value=b"me"), BytesValue).value == b"me"


def test_the_socket_is_owner_only_by_default(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "mode.sock")
    with serve_sdplite(path, Hub()):
        assert os.stat(path).st_mode & 0o777 == 0o600
    with serve_sdplite(path, Hub(), socket_mode=0o660):
        assert os.stat(path).st_mode & 0o777 == 0o660


# -- the client against misbehaving servers ------------------------------------------


class BadServer:
    """A Unix socket server that does whatever ``behave(conn)`` does with each connection."""

    def __init__(self, path: str, behave: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.behave = behave
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self.behave(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def _drain_until_closed(conn: socket.socket) -> None:
    conn.settimeout(5)
    while conn.recv(65536):
        pass


@pytest.mark.parametrize(
    "behaviour,code",
    [
        ("silent", StatusCode.UNAVAILABLE),  # never sends SETTINGS: the connect times out
        ("close", StatusCode.UNAVAILABLE),  # hangs up at once
        ("garbage", StatusCode.UNAVAILABLE),  # not HTTP/2 at all
    ],
)
def test_client_connect_fails_cleanly(sock_dir: str, behaviour: str, code: StatusCode) -> None:
    def behave(conn: socket.socket) -> None:
        if behaviour == "garbage":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        if behaviour != "close":
            _drain_until_closed(conn)

    server = BadServer(os.path.join(sock_dir, "bad.sock"), behave)
    try:
        with pytest.raises(GrpcError) as info:
            Channel(os.path.join(sock_dir, "bad.sock"), connect_timeout=0.5)
        assert info.value.code == code
    finally:
        server.close()


def test_client_deadline_holds_against_a_server_that_never_answers(sock_dir: str) -> None:
    def behave(conn: socket.socket) -> None:
        conn.sendall(settings_frame())
        _drain_until_closed(conn)

    server = BadServer(os.path.join(sock_dir, "mute.sock"), behave)
    try:
        with Channel(os.path.join(sock_dir, "mute.sock")) as channel:
            with pytest.raises(GrpcError) as info:
                channel.unary(ECHO, BytesValue(), BytesValue, timeout=0.3)
            assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    finally:
        server.close()


@settings(FUZZ, max_examples=300 * SCALE)
@given(reply=st.binary(max_size=300))
def test_client_survives_random_bytes_from_a_server(sock_dir: str, reply: bytes) -> None:
    """Whatever a server sends after its SETTINGS, a call ends with GrpcError or a value by its deadline."""

    def behave(conn: socket.socket) -> None:
        conn.sendall(settings_frame() + reply)
        _drain_until_closed(conn)

    path = os.path.join(sock_dir, "rnd.sock")
    if os.path.exists(path):
        os.unlink(path)
    server = BadServer(path, behave)
    try:
        try:
            with Channel(path, connect_timeout=2) as channel:
                channel.unary(ECHO, BytesValue(), BytesValue, timeout=0.05)
        except GrpcError:
            pass
    finally:
        server.close()
