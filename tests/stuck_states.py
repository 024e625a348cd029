"""Plugins caught in states a stop must get through: user code that never returns, peers that never read.

Shared by tests/test_bounded_stop.py (``plugin.stop()`` in the test process)
and run as a script (``python stuck_states.py STATE DIRECTORY``) for the
process form: it serves with ``plugin.run()``, prints READY once the state is
reached, and must exit with status 0 soon after SIGTERM.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from typing import Any, Optional

import h2.settings

from sdplite import DevicePlugin, Watch, build
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import paths
from sdplite.testing import KubeletEmulator

from raw_h2 import RawClient

RESOURCE = "example.com/stuck"
SOCKET = "stuck.sock"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: State -> the text the "still running after" line must name ('' for none:
#: only our own threads are involved, and they all end in time).
STATES = {
    "allocate-hung-on-the-reader": "the handler of /v1beta1.DevicePlugin/Allocate",
    "allocate-hung-on-a-worker": "the handler of /v1beta1.DevicePlugin/Allocate",
    "list-and-watch-ignores-stop": "list_and_watch",
    "get-devices-hung": "get_devices",
    "peer-never-reads-zero-window": "",
    "half-open-connections": "",
    # A kubelet that accepts and never sends its SETTINGS: the stop closes the
    # connection, which ends the Register thread's wait at once.
    "registration-in-progress": "",
}


class Impl:
    """Flexible mode; ``allocate`` and ``list_and_watch`` hang when told to."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def list_and_watch(self, watch: Watch) -> None:
        watch.send(["d0", "d1"])
        if self.scene.state == "list-and-watch-ignores-stop":
            self.scene.entered.set()
            self.scene.release.wait()  # deaf to watch.wait()
            return
        watch.wait()

    def allocate(self, device_ids: list[str]) -> None:
        self.scene.entered.set()
        self.scene.release.wait()  # never returns while the test runs


class Scene:
    def __init__(self, state: str, directory: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {sorted(STATES)}")
        self.state = state
        self.directory = directory
        self.release = threading.Event()  # lets hung user code return, at the end
        self.entered = threading.Event()  # user code has begun to hang
        self.scans = 0
        self.peers: list[Any] = []
        self.emulator: Optional[KubeletEmulator] = None
        self.built: Optional[DevicePlugin] = None
        self._silent: Optional[socket.socket] = None
        if state == "registration-in-progress":
            # A kubelet that accepts and never says a word.
            self._silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._silent.bind(os.path.join(directory, paths.KUBELET_SOCKET))
            self._silent.listen(8)
        else:
            self.emulator = KubeletEmulator(directory).start()

    def plugin(self) -> DevicePlugin:
        options: dict[str, Any] = {"plugin_dir": self.directory}
        if self.state == "allocate-hung-on-a-worker":
            options["handoff_after"] = None  # every call goes to a worker
        if self.state == "get-devices-hung":
            self.built = build(RESOURCE, SOCKET, self._get_devices, interval=0.05, **options)
        else:
            self.built = build(RESOURCE, SOCKET, Impl(self), **options)
        return self.built

    def _get_devices(self) -> list[str]:
        self.scans += 1
        if self.scans > 1:
            self.entered.set()
            self.release.wait()
        return ["d0", "d1"]

    def provoke(self) -> None:
        """Bring the running plugin into the state (returns once it is there)."""
        if self._silent is not None:
            self._silent.settimeout(30)
            conn, _ = self._silent.accept()  # the Register call has begun
            self.peers.append(conn)
            return
        assert self.emulator is not None
        self.emulator.wait_for_devices(RESOURCE, count=2, timeout=30)
        path = os.path.join(self.directory, SOCKET)
        if self.state.startswith("allocate"):
            request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["d0"])])
            channel = self.emulator.resource(RESOURCE).channel
            threading.Thread(
                target=_ignore_errors,
                args=(channel.unary, paths.ALLOCATE, request, pb.AllocateResponse),
                daemon=True,
            ).start()
        elif self.state == "peer-never-reads-zero-window":
            client = RawClient(path, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            client.read_until(lambda e: type(e).__name__ == "RemoteSettingsChanged")
            client.call(paths.LIST_AND_WATCH, b"\0\0\0\0\0")  # a ListAndWatch it will never let through
            self.peers.append(client)
            built = self.built
            assert built is not None
            _wait(lambda: built.state.stream_count == 2)  # the kubelet's and this one
            self.entered.set()
        elif self.state == "half-open-connections":
            for data in (PREFACE[:10], PREFACE):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)  # says no more, reads nothing
                self.peers.append(sock)
            self.entered.set()
        if self.state not in ("peer-never-reads-zero-window", "half-open-connections"):
            if not self.entered.wait(30):
                raise TimeoutError(f"{self.state}: the user code never began to hang")

    def close(self) -> None:
        self.release.set()
        for peer in self.peers:
            peer.close()
        if self._silent is not None:
            self._silent.close()
        if self.emulator is not None:
            self.emulator.stop()


def _ignore_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("state not reached")
        time.sleep(0.01)


def say(marker: str) -> None:
    """One write for the marker and its newline: with PYTHONUNBUFFERED, print()
    writes them apart and a log line from another thread can land between."""
    sys.stdout.write(marker + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    scene = Scene(sys.argv[1], sys.argv[2])
    plugin = scene.plugin()

    def provoke() -> None:
        scene.provoke()
        say("READY")

    threading.Thread(target=provoke, daemon=True).start()
    plugin.run()
    say("RETURNED")


if __name__ == "__main__":
    main()
