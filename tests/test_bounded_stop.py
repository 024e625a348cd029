"""A stop returns within its grace whatever is going on (issue 12).

Each state of tests/stuck_states.py twice: ``plugin.stop()`` in this
process, and ``plugin.run()`` in a child process stopped with SIGTERM, which
must exit with status 0. User code that never returns is abandoned on its
daemon thread and named in one "still running after" line; once it is let
go, every thread ends. Time is checked only with generous timeouts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
from typing import Any, Callable

import h2.events
import h2.settings
import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from sdplite import Watch, build, lifecycle, registration, supervisor
from sdplite.supervisor import BackgroundRunner
from sdplite.testing import KubeletEmulator
from sdplite.wire import Channel, Server, unary
from sdplite.wire.shutdown import Shutdown

from conftest import wait_until
from echo_service import ECHO, Hub, serve_sdplite
from raw_h2 import RawClient, grpc_frame
from stuck_states import STATES, Scene

HERE = os.path.dirname(os.path.abspath(__file__))


def returns(fn: Callable[[], Any], within: float = 30.0) -> None:
    """Run ``fn`` on a thread; fail if it has not returned ``within`` seconds (generous)."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(within), f"{fn} did not return within {within} s"


def still_running_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "still running after" in line]


@pytest.mark.parametrize("state", sorted(STATES))
def test_plugin_stop_returns_in_every_state(
    state: str, sock_dir: str, caplog: Any, baseline: Callable[[], None]
) -> None:
    caplog.set_level(logging.WARNING, logger="sdplite")
    scene = Scene(state, sock_dir)
    try:
        plugin = scene.plugin().start()
        scene.provoke()
        returns(plugin.stop)
        lines = still_running_lines(caplog.text)
        if STATES[state]:
            assert len(lines) == 1, caplog.text
            assert "still running after 1.0 s" in lines[0] and STATES[state] in lines[0], lines
        else:
            assert lines == [], lines
        assert not any(os.path.exists(path) for path in plugin.controller.socket_paths())
    finally:
        scene.close()
    baseline()  # once let go, the abandoned user code ends and nothing else is left


@pytest.mark.parametrize(
    "state,signum",
    [(state, signal.SIGTERM) for state in sorted(STATES)] + [("allocate-hung-on-the-reader", signal.SIGINT)],
)
def test_a_signal_stops_the_process_with_status_0_in_every_state(
    state: str, signum: int, sock_dir: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "stuck_states.py"), state, sock_dir],
        env={**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "READY" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "".join(lines)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    out = "".join(lines)
    assert f"received {signal.Signals(signum).name}" in out and "RETURNED" in out, out
    found = still_running_lines(out)
    if STATES[state]:
        assert len(found) == 1 and STATES[state] in found[0], out
    else:
        assert found == [], out


# -- the server alone ------------------------------------------------------------------


def test_server_stop_returns_with_a_handler_that_ignores_cancellation(
    sock_dir: str, caplog: Any, baseline: Callable[[], None]
) -> None:
    """Server.stop(1.0): a handler deaf to cancellation is abandoned and named; the rest ends."""
    path = os.path.join(sock_dir, "s.sock")
    release, entered = threading.Event(), threading.Event()

    def deaf(request: Any, context: Any) -> Any:
        entered.set()
        release.wait()
        return request

    server = Server(path, [unary(ECHO, deaf, BytesValue)])
    server.start()
    channel = Channel(path)
    try:
        caller = threading.Thread(
            target=lambda: _quiet(channel.unary, ECHO, BytesValue(value=b"x"), BytesValue), daemon=True
        )
        caller.start()
        assert entered.wait(10)
        returns(lambda: server.stop(1.0))
        lines = still_running_lines(caplog.text)
        assert len(lines) == 1 and f"the handler of {ECHO}" in lines[0], caplog.text
    finally:
        release.set()
        channel.close()
        server.stop(0)
    baseline()


def test_server_stop_returns_with_a_peer_that_never_reads(
    sock_dir: str, baseline: Callable[[], None]
) -> None:
    """Answers whose writer blocks in the socket: the peer opens its windows wide and reads nothing."""
    path = os.path.join(sock_dir, "s.sock")
    server = serve_sdplite(path, Hub())
    client = RawClient(path, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    try:
        client.h2.increment_flow_control_window(1 << 30)
        client.flush()
        client.read_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        body = BytesValue(value=b"x" * 32 * 1024).SerializeToString()
        for _ in range(30):  # about 1 MiB of answers, far more than a socket buffer holds
            client.call(ECHO, grpc_frame(body))

        def queued() -> int:
            return struct.unpack("i", fcntl.ioctl(client.sock, termios.FIONREAD, b"\0\0\0\0"))[0]

        wait_until(lambda: queued() > 100_000, what="answers to pile up unread")
        returns(lambda: server.stop(1.0))
    finally:
        client.close()
        server.stop(0)
    baseline()


def _quiet(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def test_a_stop_ends_the_register_thread_waiting_for_a_silent_kubelet(
    sock_dir: str, monkeypatch: Any, baseline: Callable[[], None]
) -> None:
    """The Register thread waits for SETTINGS that never come: closing the attempt ends
    that wait at once, so the thread ends after stop rather than at its connect timeout."""
    monkeypatch.setattr(registration, "CONNECT_TIMEOUT", 600.0)  # only the stop can end the wait
    scene = Scene("registration-in-progress", sock_dir)
    try:
        plugin = scene.plugin().start()
        scene.provoke()
        assert any(t.name.startswith("sdplite-register-") for t in threading.enumerate())
        returns(plugin.stop)
        wait_until(
            lambda: not any(t.name.startswith("sdplite-register-") for t in threading.enumerate()),
            what="the Register thread to end after stop",
        )
    finally:
        scene.close()
    baseline()


def test_a_stop_during_a_restarts_stop_counts_its_grace_from_the_stop(
    sock_dir: str, monkeypatch: Any, baseline: Callable[[], None]
) -> None:
    """The supervisor's thread is inside a restart's stop (waiting for a deaf list_and_watch)
    when the stop comes: the stop's deadline is fixed then, not after the restart's wait,
    so the two waits overlap instead of adding up to twice the grace."""
    events: list[str] = []

    def spying(kind: str) -> type:
        class Spy(Shutdown):
            def __init__(self, grace: float) -> None:
                super().__init__(grace)
                events.append(f"{kind} deadline set")

            def report(self, logger: logging.Logger, who: str) -> None:
                events.append(f"{kind} reported")
                super().report(logger, who)

        return Spy

    monkeypatch.setattr(supervisor, "Shutdown", spying("stop"))
    monkeypatch.setattr(lifecycle, "Shutdown", spying("restart"))
    scene = Scene("stop-during-a-restarts-stop", sock_dir)
    try:
        plugin = scene.plugin().start()
        scene.provoke()  # the restart's stop now waits for list_and_watch
        returns(plugin.stop)
    finally:
        scene.close()
    assert events == ["restart deadline set", "stop deadline set", "restart reported", "stop reported"]
    baseline()


class HangingRefresh:
    """refresh() hangs from its second call on (a restart's start) until released."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def list_and_watch(self, watch: Watch) -> None:
        watch.send(["d0"])
        watch.wait()

    def refresh(self) -> None:
        self.refreshes += 1
        if self.refreshes > 1:
            self.entered.set()
            self.release.wait()


def test_a_hung_refresh_during_a_restart_holds_up_neither_the_plugin_nor_the_others(
    sock_dir: str, caplog: Any, baseline: Callable[[], None]
) -> None:
    """Two plugins under one supervisor: the first's refresh() hangs on its restart. That
    plugin still serves and registers again (with a WARNING), the second keeps answering
    and restarts too, and the stop names the hung hook once."""
    caplog.set_level(logging.INFO, logger="sdplite")
    hung = HangingRefresh()
    emulator = KubeletEmulator(sock_dir).start()
    first = build("example.com/first", "first.sock", hung, plugin_dir=sock_dir)
    second = build("example.com/second", "second.sock", lambda: ["s0"], plugin_dir=sock_dir)
    runner = BackgroundRunner([first, second])
    try:
        emulator.wait_for_devices("example.com/first", count=1, timeout=30)
        emulator.wait_for_devices("example.com/second", count=1, timeout=30)
        first.restart("the test")
        assert hung.entered.wait(30)
        assert emulator.allocate("example.com/second", ["s0"]) is not None  # still served
        second.restart("the test")
        emulator.wait_for_registration("example.com/second", count=2, timeout=30)
        emulator.wait_for_registration("example.com/first", count=2, timeout=30)
        assert "refresh() has not returned after 2 s" in caplog.text
        returns(runner.stop)
        lines = still_running_lines(caplog.text)
        assert len(lines) == 1 and "the refresh() hook" in lines[0], lines
    finally:
        hung.release.set()
        runner.stop()
        emulator.stop()
    baseline()
