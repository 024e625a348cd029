"""A hand-driven HTTP/2 client for protocol tests: we choose every frame it sends.

Used where grpcio cannot be made to misbehave: compressed flags, garbage
protobuf, tiny windows, resets at odd moments. Two kinds with one interface:
:class:`RawClient` talks to a live server over its Unix socket;
:class:`MemoryClient` talks to a :class:`~sdplite.wire.server_protocol.ServerProtocol`
in this thread, bytes handed over by hand: no socket, no thread.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Optional

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from sdplite.wire.handlers import Method
from sdplite.wire.server_connection import MemoryLink, run_call
from sdplite.wire.server_protocol import Limits, ServerCall, ServerProtocol


def grpc_frame(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def request_headers(path: str, **extra: str) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


class TestClient:
    """What both kinds share: an h2 client whose every frame the test chooses."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: Optional[dict[int, int]] = None, preface: bool = True) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[Any] = []
        if preface:
            if settings:
                self.h2.local_settings = h2.settings.Settings(client=True, initial_values=settings)
            self.h2.initiate_connection()
            self.flush()

    def send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def receive_bytes(self) -> bytes:
        """The next bytes from the server; b"" once it has closed the connection."""
        raise NotImplementedError

    def ignore_stream_limit(self) -> None:
        """Behave like a client that ignores the server's MAX_CONCURRENT_STREAMS."""
        self.read_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        self.h2.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = deque([100_000])

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.send_bytes(data)

    def read_once(self) -> list[Any]:
        data = self.receive_bytes()
        if not data:
            raise ConnectionError("server closed the connection")
        events = self.h2.receive_data(data)
        # Keep the events even if the answer cannot go out (a server that
        # sends GOAWAY and closes may make this flush fail).
        self.events.extend(events)
        try:
            self.flush()
        except OSError:
            # The server closed after sending this batch: what it sent before
            # closing (its GOAWAY, say) may still wait unread in the socket.
            self._read_rest()
            raise
        return events

    def _read_rest(self) -> None:
        """Take in whatever the server sent before it closed, ignoring errors."""
        try:
            while True:
                data = self.receive_bytes()
                if not data:
                    return
                self.events.extend(self.h2.receive_data(data))
        except (OSError, h2.exceptions.ProtocolError):
            return

    def read_until(self, predicate: Callable[[Any], bool]) -> Any:
        """Read until an event matching ``predicate`` arrives; return it."""
        for event in self.events:
            if predicate(event):
                self.events.remove(event)
                return event
        while True:
            for event in self.read_once():
                if predicate(event):
                    self.events.remove(event)
                    return event

    def call(self, path: str, body: bytes, end: bool = True, **headers: str) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, request_headers(path, **headers))
        if not body and end:
            self.h2.send_data(sid, b"", end_stream=True)
        size = self.h2.max_outbound_frame_size
        for start in range(0, len(body), size):
            last = start + size >= len(body)
            self.h2.send_data(sid, body[start : start + size], end_stream=end and last)
        self.flush()
        return sid

    def status(self, sid: int) -> tuple[int, str]:
        """Read to the end of a stream; return (grpc-status, grpc-message)."""
        found: dict[str, str] = {}

        def done(event: Any) -> bool:
            if (
                isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                and event.stream_id == sid
            ):
                found.update(dict(event.headers))
                return "grpc-status" in found
            return isinstance(event, h2.events.StreamReset) and event.stream_id == sid

        event = self.read_until(done)
        if isinstance(event, h2.events.StreamReset):
            return -int(event.error_code), "reset"
        return int(found["grpc-status"]), found.get("grpc-message", "")

    def close(self) -> None:
        pass


class RawClient(TestClient):
    """A client on a live server's Unix socket."""

    def __init__(self, path: str, settings: Optional[dict[int, int]] = None, preface: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:  # the listen backlog is full (a storm of connections)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        super().__init__(settings, preface)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive_bytes(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


class MemoryClient(TestClient):
    """A client of a ServerProtocol driven in this thread: feed bytes, read bytes.

    The server runs each unary call it decides to run at once, in this
    thread, as its reader would; server-streaming calls are kept in
    ``streams`` for the test to drive (their handlers block).
    """

    def __init__(
        self,
        methods: list[Method[Any]],
        limits: Optional[Limits] = None,
        settings: Optional[dict[int, int]] = None,
        preface: bool = True,
    ) -> None:
        self.server = ServerProtocol({m.path: m for m in methods}, limits)
        self.link = MemoryLink(self.server)
        self.streams: list[ServerCall] = []
        self.server.start()
        self._pending = self.server.data_to_send()
        super().__init__(settings, preface)

    def send_bytes(self, data: bytes) -> None:
        for call in self.server.receive(data):
            if call.unary:
                run_call(self.link, call)
            else:
                self.streams.append(call)
        self._pending += self.server.data_to_send()

    def receive_bytes(self) -> bytes:
        data, self._pending = self._pending, b""
        if not data and not self.server.closed:
            raise AssertionError("the server has nothing to send: it waits for the client")
        return data

    def close(self) -> None:
        self.server.lose("connection closed by the test")
