"""Shared fixtures: short socket directories, peers, and resource counting."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

# grpcio (a test peer) lives in this process, and on Python 3.9 subprocess
# starts children with fork(), which runs grpcio's fork handlers: they start
# a poller thread in the child, which sees the fds closed before exec and
# can kill the child before it runs its program (a Popen that "succeeded"
# but never started). 3.10+ use vfork, which runs no fork handlers. Must be
# set before grpc is first imported (below, through echo_service).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from echo_service import (  # noqa: E402
    GrpcioClient,
    GrpcioServer,
    Hub,
    SdpliteClient,
    serve_sdplite,
    socket_dir,
)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Pair:
    """A client of one implementation talking to a server of another."""

    def __init__(self, client_kind: str, server_kind: str, directory: str) -> None:
        self.path = os.path.join(directory, "echo.sock")
        self.hub = Hub()
        self.server_kind = server_kind
        self.client_kind = client_kind
        if server_kind == "sdplite":
            self.server: Any = serve_sdplite(self.path, self.hub)
        else:
            self.server = GrpcioServer(self.path, self.hub)
        self.clients: list[Any] = []

    def client(self) -> Any:
        client = (SdpliteClient if self.client_kind == "sdplite" else GrpcioClient)(self.path)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop(0)


PAIRS = [("grpcio", "sdplite"), ("sdplite", "grpcio"), ("sdplite", "sdplite")]


@pytest.fixture(params=PAIRS, ids=[f"{c}-client-{s}-server" for c, s in PAIRS])
def pair(request: Any, sock_dir: str) -> Iterator[Pair]:
    p = Pair(request.param[0], request.param[1], sock_dir)
    yield p
    p.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a predicate until it holds; fail the test with ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def copy_of_the_project(destination: str) -> str:
    """The project's files (tracked and new, not ignored) copied to ``destination``.

    For builds and installs: setuptools builds in the source tree (build/,
    *.egg-info), so two at once in one checkout (CI runs two suites side by
    side) break each other ("Directory not empty: build/bdist...").
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        source = os.path.join(root, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(destination, name))
    return destination


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return threading.active_count()


def open_fds() -> frozenset[tuple[int, str]]:
    """This process's open fds, each with what it refers to (``socket:[inode]``, a path...)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            found.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:  # closed meanwhile, like listdir's own fd
            pass
    return frozenset(found)


class Snapshot:
    """The threads and fds alive now, to find those that appear later and stay.

    Comparing sets, not counts: a thread or fd of an earlier test that ends
    meanwhile cannot hide one that leaked, nor fail an exact count.
    """

    def __init__(self) -> None:
        self.threads = frozenset(threading.enumerate())
        self.fds = open_fds()

    def new(self) -> list[str]:
        """The threads and fds alive now that were not at the snapshot."""
        threads = [f"thread {t.name}" for t in threading.enumerate() if t not in self.threads]
        return threads + [f"fd {fd} -> {target}" for fd, target in sorted(open_fds() - self.fds)]

    def wait_until_back(self, timeout: float = 10.0) -> None:
        """Wait until every thread and fd that appeared since the snapshot is gone."""
        deadline = time.monotonic() + timeout
        while self.new():
            if time.monotonic() > deadline:
                raise AssertionError(f"still there after {timeout}s: {self.new()}")
            time.sleep(0.01)


@pytest.fixture
def baseline() -> Callable[[], None]:
    """Returns a check that thread and fd counts are back to where the test began."""
    threads, fds = thread_count(), fd_count()

    def check() -> None:
        wait_until(
            lambda: thread_count() <= threads and fd_count() <= fds,
            what=f"threads {thread_count()} -> {threads} and fds {fd_count()} -> {fds}: "
            f"{[t.name for t in threading.enumerate()]}",
        )

    return check
