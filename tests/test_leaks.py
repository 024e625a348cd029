"""Threads and file descriptors come back to their baseline after connections and streams end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any, Callable

import h2.config
import h2.connection
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from sdplite.wire import Channel, GrpcError, Server, StatusCode, unary

from conftest import Snapshot, wait_until
from echo_service import ECHO, HANG, WATCH, Hub, serve_sdplite
from raw_h2 import grpc_frame, request_headers

HERE = os.path.dirname(__file__)


def _running_baseline(server: Server) -> Callable[[], None]:
    """The threads and fds of a started, idle server; the returned check waits until
    every thread and fd that appeared since is gone (see conftest.Snapshot)."""
    snapshot = Snapshot()

    def check() -> None:
        wait_until(lambda: server.connection_count == 0, what="connections to close")
        snapshot.wait_until_back()

    return check


def test_grpcio_churn_leaves_no_threads_or_fds(sock_dir: str, baseline: Callable[[], None]) -> None:
    """200 grpcio connections opened and closed, 200 grpcio streams cancelled: nothing leaks.

    The grpcio client runs in its own process, so every thread and fd counted
    here belongs to our server, which keeps running throughout.
    """
    path = os.path.join(sock_dir, "s.sock")
    hub = Hub()
    server = serve_sdplite(path, hub, worker_idle_timeout=0.1)
    try:
        running = _running_baseline(server)
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "grpcio_churn.py"), path, "200", "200"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        running()
        assert not any(hub.watchers.values()), "a cancelled stream's watcher survived"
    finally:
        server.stop(0)
    baseline()
    assert not os.path.exists(path)


def test_our_client_churn_and_abrupt_disconnects_leave_nothing(
    sock_dir: str, baseline: Callable[[], None]
) -> None:
    """Channels opened and closed, streams cancelled, sockets dropped mid-stream: nothing leaks."""
    path = os.path.join(sock_dir, "s.sock")
    hub = Hub()
    server = serve_sdplite(path, hub, worker_idle_timeout=0.1)
    try:
        running = _running_baseline(server)
        for _ in range(200):
            with Channel(path) as channel:
                assert channel.unary(ECHO, BytesValue(value=b"a"), BytesValue).value == b"a"
        with Channel(path) as channel:
            for i in range(200):
                stream = channel.server_streaming(WATCH, StringValue(value=f"greet:{i}"), StringValue)
                assert next(stream).value == "hello"
                stream.cancel()
        for i in range(20):  # a peer that vanishes with a stream open
            channel = Channel(path)
            stream = channel.server_streaming(WATCH, StringValue(value=f"greet:drop{i}"), StringValue)
            assert next(stream).value == "hello"
            channel._conn.sock.shutdown(socket.SHUT_RDWR)
            try:
                next(stream)
            except GrpcError as exc:
                assert exc.code == StatusCode.UNAVAILABLE
            channel.close()
        running()
        assert not any(hub.watchers.values()), "a cancelled stream's watcher survived"
    finally:
        server.stop(0)
    baseline()


def test_a_reader_stuck_in_a_call_hands_reading_over_and_every_thread_ends(
    sock_dir: str, baseline: Callable[[], None]
) -> None:
    """A call that hangs on the reading thread: reading moves to another thread, and once the
    call returns and the connection closes, no thread or fd is left behind."""
    path = os.path.join(sock_dir, "s.sock")
    hub = Hub()
    server = serve_sdplite(path, hub, worker_idle_timeout=0.1)
    try:
        running = _running_baseline(server)
        channel = Channel(path)
        outcome: list[StatusCode] = []

        def hang() -> None:
            try:
                channel.unary(HANG, StringValue(value="stuck"), StringValue, timeout=2)
            except GrpcError as exc:
                outcome.append(exc.code)

        caller = threading.Thread(target=hang)
        caller.start()
        assert hub.event(hub.watching, "stuck").wait(10)
        for _ in range(20):  # served meanwhile, by whichever thread reads now
            assert channel.unary(ECHO, BytesValue(value=b"x"), BytesValue).value == b"x"
        # The deadline passes: the caller hears so, the handler is cancelled and returns,
        # and the thread that ran it must leave.
        caller.join(10)
        assert outcome == [StatusCode.DEADLINE_EXCEEDED]
        assert hub.event(hub.cancelled, "stuck").wait(10)
        channel.close()
        running()
    finally:
        server.stop(0)
    baseline()


def test_calls_queued_on_a_connection_that_ends_are_dropped_and_the_watchdog_ends(
    sock_dir: str, baseline: Callable[[], None]
) -> None:
    """Issue 12: a connection that ends while a call waits in its reader's queue.

    One write carries the preface, a whole unary call and a GOAWAY, so the
    reader reads them as one batch: it queues the call for itself (which arms
    a watchdog on a worker), then meets the GOAWAY and leaves before running
    it. The call's stream is dead with its connection: it must be dropped,
    not run, and the watchdog must end rather than wake every 5 ms for ever
    (which made ``stop()`` wait for it).
    """
    path = os.path.join(sock_dir, "s.sock")
    ran: list[bytes] = []

    def echo(request: BytesValue, context: Any) -> BytesValue:
        ran.append(request.value)
        return request

    server = Server(path, [unary(ECHO, echo, BytesValue)], worker_idle_timeout=0.05)
    server.start()
    try:
        peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        peer.initiate_connection()
        peer.send_headers(1, request_headers(ECHO))
        peer.send_data(1, grpc_frame(BytesValue(value=b"late").SerializeToString()), end_stream=True)
        peer.close_connection()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(peer.data_to_send())
            while sock.recv(65536):  # until the server closes its side
                pass
        wait_until(lambda: server.connection_count == 0, what="the connection to close")
        wait_until(lambda: server.pool.size == 0, what="the watchdog and workers to end")
        assert ran == [], "a call of a connection that had ended was run"
    finally:
        stopper = threading.Thread(target=server.stop, args=(1.0,))
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "stop() did not return"
    baseline()
