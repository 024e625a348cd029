"""Peer processes for the interop tests: grpc-go and grpc-js, driven over pipes.

Both peers speak one protocol (see ``go/main.go``): commands go to the
peer's stdin as JSON lines ``{"id": N, "cmd": NAME, ...}``; events come back
on its stdout as JSON lines ``{"event": KIND, ...}``, and each command gets one
``{"event": "reply", "id": N, ...}``. A missing toolchain is an error, never a
skip: CI installs both (``.ci/run``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from sdplite.wire import StatusCode

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("go", "js")
#: How long any wait on a peer may take before the test fails (not a timing check).
WAIT = 30.0

Event = dict[str, Any]


@functools.cache
def go_binary() -> str:
    """Build the grpc-go peer if its sources changed (cached) and return its path."""
    build = subprocess.run(
        ["bash", os.path.join(HERE, "build_go.sh")], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0:
        raise RuntimeError(f"building the grpc-go peer failed:\n{build.stderr}")
    return build.stdout.strip().splitlines()[-1]


def js_command() -> list[str]:
    """The grpc-js peer; its packages come from ``npm ci`` in tests/interop/js."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the grpc-js peer needs Node.js 20")
    js = os.path.join(HERE, "js")
    if not os.path.isdir(os.path.join(js, "node_modules", "@grpc", "grpc-js")):
        raise RuntimeError(f"@grpc/grpc-js is not installed: run `npm ci` in {js}")
    return [node, os.path.join(js, "peer.js")]


def peer_command(kind: str) -> list[str]:
    if kind == "go":
        return [go_binary()]
    if kind == "js":
        return js_command()
    raise ValueError(f"unknown peer kind {kind!r}")


def digest(devices: Iterable[tuple[str, str]]) -> str:
    """The peers' digest of a device list: sha256 of "ID<TAB>health<NL>" lines."""
    h = hashlib.sha256()
    for device_id, health in devices:
        h.update(f"{device_id}\t{health}\n".encode())
    return h.hexdigest()


def window_args(kind: str, change_windows: bool) -> list[str]:
    """Make the peer change its INITIAL_WINDOW_SIZE in the middle of streams.

    grpc-go does so by itself (its BDP estimator raises the window as data
    flows); grpc-js never does, so its peer is told to, alternating 1 MiB
    and 16 KiB.
    """
    return ["--midstream-window", str(1024 * 1024)] if change_windows and kind == "js" else []


class PeerError(AssertionError):
    """The peer died, said something unexpected, or never said what we waited for."""


class Peer:
    """One peer process. Events are kept in arrival order; waits never sleep blindly."""

    def __init__(self, kind: str, mode: str, args: Sequence[str]) -> None:
        self.kind = kind
        self.argv = [*peer_command(kind), mode, *args]
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        self._ids = itertools.count(1)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._threads = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.ready = self.wait_for("ready")
        self.pid: int = self.ready["pid"]

    def __repr__(self) -> str:
        return f"<{self.kind} peer {' '.join(self.argv[-4:])}>"

    # -- reading ---------------------------------------------------------------

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line}
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()
        with self.cond:
            self.events.append({"event": "exit"})
            self.cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.stderr.append(line.rstrip("\n"))

    def mark(self) -> int:
        """A position in the event log: ``wait_for(..., since=mark)`` looks only after it."""
        with self.cond:
            return len(self.events)

    def find(self, kind: str, since: int = 0, **match: Any) -> list[Event]:
        """Events of one kind (after ``since``) whose fields equal ``match``."""
        with self.cond:
            return [
                e
                for e in self.events[since:]
                if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_for(
        self,
        kind: str,
        since: int = 0,
        where: Optional[Callable[[Event], bool]] = None,
        timeout: float = WAIT,
        **match: Any,
    ) -> Event:
        """The first event of ``kind`` after ``since`` that matches; fails after ``timeout``."""

        def found() -> Optional[Event]:
            for e in self.find(kind, since, **match):
                if where is None or where(e):
                    return e
            return None

        with self.cond:
            event = None

            def done() -> bool:
                nonlocal event
                event = found()
                return event is not None or any(e["event"] == "exit" for e in self.events[since:])

            self.cond.wait_for(done, timeout)
            if event is None:
                raise PeerError(f"{self!r}: no {kind} event matching {match} within {timeout}s{self._tail()}")
            return event

    def _tail(self) -> str:
        exit_code = self.proc.poll()
        lines = [f"\n  exit code: {exit_code}"] if exit_code is not None else []
        lines += [f"\n  event: {json.dumps(e)[:300]}" for e in self.events[-8:]]
        lines += [f"\n  stderr: {line}" for line in self.stderr[-20:]]
        return "".join(lines)

    # -- commands ----------------------------------------------------------------

    def call(self, cmd: str, timeout: float = WAIT, **args: Any) -> Event:
        """Send a command and return its reply."""
        return self.reply(self.start(cmd, **args), timeout)

    def start(self, cmd: str, **args: Any) -> int:
        """Send a command without waiting (the peer runs commands concurrently); see :meth:`reply`."""
        number = next(self._ids)
        self.send({"id": number, "cmd": cmd, **args})
        return number

    def reply(self, number: int, timeout: float = WAIT) -> Event:
        """The reply to command ``number``, once it comes."""
        return self.wait_for("reply", timeout=timeout, id=number)

    def send(self, command: Event) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise PeerError(f"{self!r} is gone: {exc}{self._tail()}") from None

    def stop(self) -> None:
        """Stop gracefully (the peer closes its connections and sockets) and wait for the exit."""
        if self.proc.poll() is None:
            self.call("stop")
        self._reap()

    def kill(self) -> None:
        """SIGKILL: connections drop without a goodbye, sockets stay behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def close(self) -> None:
        """For fixtures: stop if still running, kill if that does not work."""
        try:
            self.stop()
        except PeerError:
            self.kill()
        finally:
            self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)
        for thread in self._threads:
            thread.join(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


def check(reply: Event, code: StatusCode = StatusCode.OK) -> Event:
    """Assert a call's status (the peer reports it as a number) and return the reply."""
    got = StatusCode(reply["code"]) if reply["code"] >= 0 else reply["code"]
    assert got == code, f"expected {code.name}, got {got!r}: {reply.get('message')!r}"
    return reply


class KubeletPeer(Peer):
    """The peer acting as the kubelet in ``directory`` (serves kubelet.sock there)."""

    def __init__(
        self,
        kind: str,
        directory: str,
        authority: str = "localhost",
        cleanup: bool = False,
        change_windows: bool = False,
    ) -> None:
        args = ["--dir", directory, "--authority", authority]
        args += ["--cleanup"] if cleanup else []
        super().__init__(kind, "kubelet", args + window_args(kind, change_windows))
        self.directory = directory

    def wait_registered(self, resource: str, number: int = 1, since: int = 0) -> Event:
        """The ``number``-th successful registration of ``resource`` (after ``since``)."""

        def nth(e: Event) -> bool:
            return len(self.find("register", since, resource=resource)) >= number

        self.wait_for("register", since, where=nth, resource=resource)
        return self.find("register", since, resource=resource)[number - 1]

    def wait_list(
        self,
        resource: str,
        where: Callable[[Event], bool],
        since: int = 0,
        registration: Optional[int] = None,
    ) -> Event:
        """The first ListAndWatch message of ``resource`` that satisfies ``where``."""
        match = {} if registration is None else {"registration": registration}
        return self.wait_for("list", since, where=where, resource=resource, **match)

    def allocate(self, resource: str, *containers: list[str]) -> Event:
        return self.call("allocate", resource=resource, containers=list(containers))

    def preferred(self, resource: str, available: list[str], must_include: list[str], size: int) -> Event:
        return self.call(
            "preferred", resource=resource, available=available, must_include=must_include, size=size
        )

    def pre_start(self, resource: str, ids: list[str], timeout_ms: int = 0) -> Event:
        """PreStartContainer with the kubelet's 30 s deadline, or ``timeout_ms``."""
        return self.call("pre_start", resource=resource, ids=ids, timeout_ms=timeout_ms)


class PluginPeer(Peer):
    """The peer serving v1beta1.DevicePlugin on ``socket`` (for our client)."""

    def __init__(self, kind: str, socket: str, change_windows: bool = False) -> None:
        super().__init__(kind, "plugin", ["--socket", socket] + window_args(kind, change_windows))
        self.socket = socket

    def publish(
        self, devices: Sequence[tuple[str, str]] = (), generate: Optional[dict[str, Any]] = None
    ) -> int:
        """Send a new list to every open ListAndWatch; returns how many there were."""
        if generate is not None:
            reply = self.call("publish", generate=generate)
        else:
            reply = self.call("publish", devices=[[i, h] for i, h in devices])
        return int(check(reply)["watchers"])

    def end_streams(self, code: StatusCode, message: str = "") -> int:
        return int(check(self.call("end_streams", code=int(code), message=message))["watchers"])


class WatcherPeer(KubeletPeer):
    """The peer acting as the kubelet's plugin watcher on the registry ``directory`` (docs/design.md).

    Sockets found there register as ``register`` events (with ``socket``); each
    NotifyRegistrationStatus it sends is a ``notify`` event; a socket that goes
    away is a ``deregister`` event. The kubelet role's commands (allocate, ...)
    work on the resources it registered.
    """

    def __init__(self, kind: str, directory: str, authority: str = "localhost") -> None:
        Peer.__init__(self, kind, "watcher", ["--dir", directory, "--authority", authority])
        self.directory = directory

    def wait_notify(self, socket: str, since: int = 0) -> Event:
        """The first NotifyRegistrationStatus the watcher sent to ``socket`` (after ``since``)."""
        return self.wait_for("notify", since, socket=socket)


class DraKubeletPeer(Peer):
    """The peer acting as the kubelet's DRA side on the registry ``directory`` (docs/design.md, DRA).

    Its plugin watcher registers ``DRAPlugin`` sockets found there (``register``
    events with the chosen ``version`` and ``health`` service), holds the
    health stream open (``health`` events; re-opened ``health_retry_ms`` after
    an end) and calls NodePrepareResources / NodeUnprepareResources on command.
    """

    def __init__(
        self,
        kind: str,
        directory: str,
        health_retry_ms: int = 200,
        known: str = "v1.DRAPlugin,v1beta1.DRAPlugin",
        health: str = "v1,v1alpha1",
    ) -> None:
        """``known``: the DRAPlugin versions this kubelet knows (a 1.32/1.33 kubelet:
        ``"v1beta1.DRAPlugin"``); ``health``: the health versions, preferred first."""
        args = [
            "--dir",
            directory,
            "--health-retry-ms",
            str(health_retry_ms),
            "--known",
            known,
            "--health",
            health,
        ]
        super().__init__(kind, "dra", args)
        self.directory = directory

    def wait_registered(self, driver: str, number: int = 1, since: int = 0) -> Event:
        """The ``number``-th registration of ``driver`` after ``since``."""

        def nth(e: Event) -> bool:
            return len(self.find("register", since, driver=driver)) >= number

        self.wait_for("register", since, where=nth, driver=driver)
        return self.find("register", since, driver=driver)[number - 1]

    def prepare(self, driver: str, claims: Sequence[Sequence[str]], version: str = "") -> Event:
        """NodePrepareResources with ``claims`` as (namespace, uid, name), on the registered version
        or ``version``; the reply's ``claims`` maps UID -> {"error", "devices"}."""
        return self.call("prepare", driver=driver, claims=[list(c) for c in claims], version=version)

    def unprepare(self, driver: str, claims: Sequence[Sequence[str]], version: str = "") -> Event:
        return self.call("unprepare", driver=driver, claims=[list(c) for c in claims], version=version)

    def wait_health(self, driver: str, where: Callable[[Event], bool], since: int = 0) -> Event:
        return self.wait_for("health", since, where=where, driver=driver)
