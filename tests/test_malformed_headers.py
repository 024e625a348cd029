"""Malformed header lists (RFC 9113 8.2, 8.3): that stream is reset, the connection goes on.

h2's own inbound validation is off; sdplite.wire.header_checks does it. Each
case here sends one malformed request (or a malformed response, to our
client), expects RST_STREAM(PROTOCOL_ERROR) on that stream alone (RFC 9113
8.1.1: a stream error, not a connection error), and then a normal call on the
same connection. The request tables run in memory against the server's call
handling (bytes in, bytes out, no socket, no thread); a sample of them, and
every short table, also runs over a live server's socket.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from sdplite.wire import Channel, GrpcError, StatusCode
from sdplite.wire.header_checks import MalformedHeaders, check_response, check_trailers, parse_request

from echo_service import ECHO, Hub, sdplite_methods, serve_sdplite
from raw_h2 import MemoryClient, RawClient, TestClient, grpc_frame

Headers = list[tuple[bytes, bytes]]

METHOD = (b":method", b"POST")
SCHEME = (b":scheme", b"http")
PATH = (b":path", ECHO.encode())
AUTHORITY = (b":authority", b"localhost")
CONTENT_TYPE = (b"content-type", b"application/grpc")
TE = (b"te", b"trailers")
GOOD: Headers = [METHOD, SCHEME, PATH, AUTHORITY, CONTENT_TYPE, TE]


def good_with(*extra: tuple[bytes, bytes]) -> Headers:
    return GOOD + list(extra)


def good_without(name: bytes) -> Headers:
    return [h for h in GOOD if h[0] != name]


def good_replacing(name: bytes, value: bytes) -> Headers:
    return [(n, value if n == name else v) for n, v in GOOD]


MALFORMED_REQUESTS = {
    # field names (8.2.1)
    "an upper-case name": good_with((b"X-Custom", b"v")),
    "an empty name": good_with((b"", b"v")),
    "a space in a name": good_with((b"x custom", b"v")),
    "a control byte in a name": good_with((b"x\x01custom", b"v")),
    "a DEL byte in a name": good_with((b"x\x7fcustom", b"v")),
    "a non-ASCII byte in a name": good_with((b"x\xe9custom", b"v")),
    "a colon inside a regular name": good_with((b"x:custom", b"v")),
    # field values (8.2.1)
    "a NUL in a value": good_with((b"x-custom", b"a\x00b")),
    "a CR in a value": good_with((b"x-custom", b"a\rb")),
    "a LF in a value": good_with((b"x-custom", b"a\nb")),
    "a leading space in a value": good_with((b"x-custom", b" v")),
    "a trailing space in a value": good_with((b"x-custom", b"v ")),
    "a leading tab in a value": good_with((b"x-custom", b"\tv")),
    "a trailing tab in a value": good_with((b"x-custom", b"v\t")),
    "a CR in a pseudo-header value": good_replacing(b":path", ECHO.encode() + b"\r"),
    "a LF in content-type": good_replacing(b"content-type", b"application/grpc\n"),
    # connection-specific fields (8.2.2)
    "connection": good_with((b"connection", b"close")),
    "keep-alive": good_with((b"keep-alive", b"timeout=5")),
    "proxy-connection": good_with((b"proxy-connection", b"keep-alive")),
    "transfer-encoding": good_with((b"transfer-encoding", b"chunked")),
    "upgrade": good_with((b"upgrade", b"h2c")),
    "te other than trailers": good_replacing(b"te", b"gzip"),
    # pseudo-headers (8.3)
    "a pseudo-header after a regular header": [METHOD, SCHEME, AUTHORITY, CONTENT_TYPE, PATH],
    "an unknown pseudo-header": GOOD[:4] + [(b":custom", b"v")] + GOOD[4:],
    "a response pseudo-header in a request": GOOD[:4] + [(b":status", b"200")] + GOOD[4:],
    ":protocol without extended CONNECT": GOOD[:4] + [(b":protocol", b"websocket")] + GOOD[4:],
    "a duplicate :method": [METHOD, METHOD] + GOOD[1:],
    "a duplicate :scheme": [SCHEME] + GOOD,
    "a duplicate :path": [PATH] + GOOD,
    "a duplicate :authority": [AUTHORITY] + GOOD,
    "no :method": good_without(b":method"),
    "no :scheme": good_without(b":scheme"),
    "no :path": good_without(b":path"),
    "an empty :path": good_replacing(b":path", b""),
    "CONNECT with :scheme and :path": good_replacing(b":method", b"CONNECT"),
    # host (8.3.1)
    "a host that differs from :authority": good_with((b"host", b"elsewhere")),
    "two host fields": good_with((b"host", b"localhost"), (b"host", b"localhost")),
}


@pytest.fixture
def socket_client(sock_dir: str) -> Iterator[Callable[[], TestClient]]:
    """connect() opens a raw client on a live server."""
    path = os.path.join(sock_dir, "m.sock")
    server = serve_sdplite(path, Hub())
    clients: list[TestClient] = []

    def connect() -> TestClient:
        clients.append(raw_client(RawClient(path)))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()
    server.stop(0)


def memory_client() -> TestClient:
    """A raw client of the server's call handling alone: no socket, no thread."""
    return raw_client(MemoryClient(sdplite_methods(Hub())))


@pytest.fixture(params=["memory", "socket"])
def connect(request: Any) -> Callable[[], TestClient]:
    """Either kind of client; each case runs with both."""
    if request.param == "memory":
        return memory_client
    return request.getfixturevalue("socket_client")  # type: ignore[no-any-return]


def raw_client(client: TestClient) -> TestClient:
    """A client whose h2 sends header lists exactly as given."""
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    return client


def send(client: TestClient, headers: Headers, body: bytes = b"", trailers: Any = None) -> int:
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, headers)
    client.h2.send_data(sid, grpc_frame(body), end_stream=trailers is None)
    if trailers is not None:
        client.h2.send_headers(sid, trailers, end_stream=True)
    client.flush()
    return sid


def response(client: TestClient, sid: int) -> dict[str, str]:
    """Every header and trailer of a stream's answer, or {"reset": error code}."""
    found: dict[str, str] = {}

    def done(event: Any) -> bool:
        if getattr(event, "stream_id", None) != sid:
            return False
        if isinstance(event, h2.events.StreamReset):
            found["reset"] = str(int(event.error_code))
            return True
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            found.update(dict(event.headers))
        return isinstance(event, h2.events.StreamEnded)

    client.read_until(done)
    return found


def assert_connection_serves(client: TestClient) -> None:
    sid = send(client, GOOD, BytesValue(value=b"next").SerializeToString())
    assert response(client, sid)["grpc-status"] == "0"
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)


def assert_reset_alone(client: TestClient, headers: Headers) -> None:
    try:
        sid = send(client, headers)
        assert response(client, sid) == {"reset": str(h2.errors.ErrorCodes.PROTOCOL_ERROR.value)}
        assert_connection_serves(client)
    finally:
        client.close()


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_a_malformed_request_is_reset_with_protocol_error_and_the_connection_goes_on(
    headers: Headers,
) -> None:
    assert_reset_alone(memory_client(), headers)


#: One case from each rule group, over a live server's socket too.
SOCKET_SAMPLE = [
    "an upper-case name",
    "a LF in a value",
    "connection",
    "a duplicate :path",
    "two host fields",
]


@pytest.mark.parametrize("case", SOCKET_SAMPLE)
def test_a_malformed_request_on_a_live_server_is_reset_and_the_connection_goes_on(
    socket_client: Callable[[], TestClient], case: str
) -> None:
    assert_reset_alone(socket_client(), MALFORMED_REQUESTS[case])


MALFORMED_TRAILERS = {
    "a pseudo-header in trailers": [(b":path", ECHO.encode())],
    "an upper-case name in trailers": [(b"X-Trailer", b"v")],
    "a connection-specific field in trailers": [(b"connection", b"close")],
    "a LF in a trailer value": [(b"x-trailer", b"a\nb")],
}


@pytest.mark.parametrize("trailers", MALFORMED_TRAILERS.values(), ids=MALFORMED_TRAILERS.keys())
def test_malformed_request_trailers_reset_the_stream(connect: Any, trailers: Headers) -> None:
    client = connect()
    try:
        sid = send(client, GOOD, trailers=trailers)
        assert response(client, sid) == {"reset": str(h2.errors.ErrorCodes.PROTOCOL_ERROR.value)}
        assert_connection_serves(client)
    finally:
        client.close()


WELL_FORMED_REQUESTS = {
    "te: Trailers in any case": good_replacing(b"te", b"Trailers"),
    "no te at all (grpc-go does not require it)": good_without(b"te"),
    "a host equal to :authority": good_with((b"host", b"localhost")),
    "host instead of :authority": good_without(b":authority") + [(b"host", b"localhost")],
    "an empty value": good_with((b"x-empty", b"")),
    "inner spaces and non-ASCII bytes in a value": good_with((b"x-custom", b"a b\tc \xe9")),
}


@pytest.mark.parametrize("headers", WELL_FORMED_REQUESTS.values(), ids=WELL_FORMED_REQUESTS.keys())
def test_well_formed_requests_are_served(connect: Any, headers: Headers) -> None:
    client = connect()
    try:
        sid = send(client, headers, BytesValue(value=b"x").SerializeToString())
        assert response(client, sid)["grpc-status"] == "0"
    finally:
        client.close()


def test_well_formed_request_trailers_are_accepted(connect: Any) -> None:
    client = connect()
    try:
        sid = send(client, GOOD, BytesValue(value=b"x").SerializeToString(), trailers=[(b"x-trailer", b"v")])
        assert response(client, sid)["grpc-status"] == "0"
    finally:
        client.close()


def test_a_request_without_authority_or_host_is_400_internal(connect: Any) -> None:
    """Well-formed HTTP/2, but HTTP wants an authority: answered as grpc-go answers it."""
    client = connect()
    try:
        got = response(client, send(client, good_without(b":authority")))
        assert (got[":status"], got["grpc-status"]) == ("400", str(int(StatusCode.INTERNAL)))
        assert_connection_serves(client)
    finally:
        client.close()


def test_a_well_formed_connect_is_refused_as_a_wrong_method(connect: Any) -> None:
    client = connect()
    try:
        got = response(client, send(client, [(b":method", b"CONNECT"), AUTHORITY]))
        assert (got[":status"], got["grpc-status"]) == ("405", str(int(StatusCode.INTERNAL)))
        assert_connection_serves(client)
    finally:
        client.close()


def test_metadata_reaches_the_handler_as_sent() -> None:
    """The checker also splits the request: gRPC fields out, the rest is metadata in order."""
    request = parse_request(
        GOOD + [(b"grpc-timeout", b"5S"), (b"grpc-encoding", b"identity"), (b"x-a", b"1"), (b"x-b", b"2")]
    )
    assert (request.method, request.path, request.authority) == (b"POST", ECHO.encode(), b"localhost")
    assert (request.content_type, request.timeout, request.encoding) == (
        b"application/grpc",
        b"5S",
        b"identity",
    )
    assert request.metadata == [TE, (b"x-a", b"1"), (b"x-b", b"2")]


# -- our client against a server sending malformed responses -------------------------------

OK_RESPONSE: Headers = [(b":status", b"200"), CONTENT_TYPE]
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]

MALFORMED_RESPONSES = {
    "no :status": ([CONTENT_TYPE], OK_TRAILERS),
    "a non-numeric :status": ([(b":status", b"2x0"), CONTENT_TYPE], OK_TRAILERS),
    "a duplicate :status": ([(b":status", b"200")] + OK_RESPONSE, OK_TRAILERS),
    "a request pseudo-header in a response": (OK_RESPONSE + [(b":path", b"/")], OK_TRAILERS),
    "a pseudo-header after a regular header": ([CONTENT_TYPE, (b":status", b"200")], OK_TRAILERS),
    "an upper-case name in a response": (OK_RESPONSE + [(b"X-Custom", b"v")], OK_TRAILERS),
    "a connection-specific field in a response": (OK_RESPONSE + [(b"connection", b"close")], OK_TRAILERS),
    "a LF in a response value": (OK_RESPONSE + [(b"x-custom", b"a\nb")], OK_TRAILERS),
    "a pseudo-header in trailers": (OK_RESPONSE, OK_TRAILERS + [(b":status", b"200")]),
    "a space after a trailer value": (OK_RESPONSE, [(b"grpc-status", b"0 ")]),
}


class ScriptedServer:
    """Answers stream 1 with ``first`` (headers, trailers) and every later stream correctly.

    When only the headers of ``first`` are malformed, stream 1 is left open
    after its message (no trailers), so the client can still reset it.
    """

    def __init__(self, path: str, first: tuple[Headers, Headers]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.first = first
        self.resets: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _answer(self, h2conn: h2.connection.H2Connection, sid: int) -> None:
        headers, trailers = self.first if sid == 1 else (OK_RESPONSE, OK_TRAILERS)
        h2conn.send_headers(sid, headers)
        h2conn.send_data(sid, grpc_frame(BytesValue(value=b"ok").SerializeToString()))
        if sid != 1 or trailers is not OK_TRAILERS:
            h2conn.send_headers(sid, trailers, end_stream=True)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2conn = h2.connection.H2Connection(config)
        h2conn.initiate_connection()
        with conn:
            try:
                conn.sendall(h2conn.data_to_send())
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    for event in h2conn.receive_data(data):
                        if isinstance(event, h2.events.StreamEnded):
                            self._answer(h2conn, event.stream_id)
                        elif isinstance(event, h2.events.StreamReset):
                            self.resets.append((event.stream_id, event.error_code))
                    conn.sendall(h2conn.data_to_send())
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("first", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_a_malformed_response_fails_that_call_internal_and_the_channel_goes_on(
    sock_dir: str, first: tuple[Headers, Headers]
) -> None:
    path = os.path.join(sock_dir, "s.sock")
    server = ScriptedServer(path, first)
    try:
        with Channel(path) as channel:
            with pytest.raises(GrpcError) as info:
                channel.unary(ECHO, BytesValue(value=b"x"), BytesValue, timeout=10)
            assert info.value.code == StatusCode.INTERNAL
            assert "malformed" in info.value.message
            # The same connection still serves: nothing but that call was lost.
            assert channel.unary(ECHO, BytesValue(value=b"x"), BytesValue, timeout=10).value == b"ok"
            assert not channel.closed
        if first[1] is OK_TRAILERS:  # stream 1 was still open: the client reset it
            assert server.resets == [(1, h2.errors.ErrorCodes.PROTOCOL_ERROR)]
    finally:
        server.close()


# -- the checker on its own --------------------------------------------------------------


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_parse_request_names_the_problem(headers: Headers) -> None:
    with pytest.raises(MalformedHeaders) as info:
        parse_request(headers)
    assert str(info.value)


def test_well_formed_responses_and_trailers_pass() -> None:
    check_response(OK_RESPONSE + [(b"grpc-encoding", b"identity")])
    check_trailers(OK_TRAILERS + [(b"grpc-message", b"a%20b"), (b"x-bin", b"")])
