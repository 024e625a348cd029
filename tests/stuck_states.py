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

from sdplite import Device, DevicePlugin, Watch, build, dra
from sdplite.api import deviceplugin_pb2 as pb
from sdplite.api import dra_v1_pb2 as dra_v1
from sdplite.api import paths
from sdplite.testing import KubeletEmulator
from sdplite.testing.dra import DraTestbed
from sdplite.wire import Channel

from raw_h2 import RawClient

RESOURCE = "example.com/stuck"
SOCKET = "stuck.sock"
DRA_DRIVER = "gpu.example.com"
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
    "destroy-hung": "the destroy() hook",
    # refresh() hangs when a restart starts the server again: the plugin serves
    # and registers without it, and the stop names it.
    "refresh-hung-during-a-restart": "the refresh() hook",
    # The stop comes while a restart's stop waits for a deaf list_and_watch
    # (the restart names it; the stop has its own grace from the signal).
    "stop-during-a-restarts-stop": "list_and_watch",
    "dra-prepare-hung": f"the handler of {paths.DRA_V1_PREPARE}",
}
DEAF_FIRST_LIST_AND_WATCH = ("list-and-watch-ignores-stop", "stop-during-a-restarts-stop")


class Impl:
    """Flexible mode; ``allocate`` and ``list_and_watch`` hang when told to."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.calls = {"list_and_watch": 0, "refresh": 0}

    def list_and_watch(self, watch: Watch) -> None:
        watch.send(["d0", "d1"])
        self.calls["list_and_watch"] += 1
        if self.scene.state in DEAF_FIRST_LIST_AND_WATCH and self.calls["list_and_watch"] == 1:
            self.scene.entered.set()
            self.scene.release.wait()  # deaf to watch.wait()
            return
        watch.wait()

    def refresh(self) -> None:
        self.calls["refresh"] += 1
        if self.scene.state == "refresh-hung-during-a-restart" and self.calls["refresh"] > 1:
            self.scene.entered.set()
            self.scene.release.wait()

    def destroy(self) -> None:
        if self.scene.state == "destroy-hung":
            self.scene.release.wait()

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
        self.bed: Optional[DraTestbed] = None
        self.built: Optional[DevicePlugin] = None
        self.dra_plugin: Optional[dra.DRAPlugin] = None
        self._silent: Optional[socket.socket] = None
        if state == "registration-in-progress":
            # A kubelet that accepts and never says a word.
            self._silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._silent.bind(os.path.join(directory, paths.KUBELET_SOCKET))
            self._silent.listen(8)
        elif state.startswith("dra-"):
            self.bed = DraTestbed(directory=directory).start()
        else:
            self.emulator = KubeletEmulator(directory).start()

    def plugin(self) -> Any:
        if self.bed is not None:
            devices = [Device("gpu-0", attributes={"model": "X1"})]
            self.dra_plugin = dra.build(DRA_DRIVER, self._prepare, devices=devices, **self.bed.options())
            return self.dra_plugin
        options: dict[str, Any] = {"plugin_dir": self.directory}
        if self.state == "allocate-hung-on-a-worker":
            options["handoff_after"] = None  # every call goes to a worker
        if self.state == "get-devices-hung":
            self.built = build(RESOURCE, SOCKET, self._get_devices, interval=0.05, **options)
        else:
            self.built = build(RESOURCE, SOCKET, Impl(self), **options)
        return self.built

    def _prepare(self, claim: Any) -> None:
        self.entered.set()
        self.release.wait()

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
        if self.bed is not None:
            self._provoke_dra()
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
        elif self.state == "refresh-hung-during-a-restart":
            assert self.built is not None
            self.built.restart("the test")
        elif self.state == "stop-during-a-restarts-stop":
            self._restart_and_wait_for_its_stop()
        if self.state not in ("peer-never-reads-zero-window", "half-open-connections", "destroy-hung"):
            if not self.entered.wait(30):
                raise TimeoutError(f"{self.state}: the user code never began to hang")

    def _restart_and_wait_for_its_stop(self) -> None:
        """Restart; return once the restart's stop has removed the socket and
        waits (1 s) for the deaf list_and_watch."""
        assert self.built is not None
        if not self.entered.wait(30):
            raise TimeoutError("list_and_watch never began")
        self.built.restart("the test")
        _wait(lambda: not os.path.exists(os.path.join(self.directory, SOCKET)))

    def _provoke_dra(self) -> None:
        """A NodePrepareResources whose prepare hook never returns."""
        assert self.bed is not None and self.dra_plugin is not None
        namespace, uid, name = self.bed.claim(DRA_DRIVER, ["gpu-0"])
        plugin = self.dra_plugin
        _wait(lambda: os.path.exists(plugin.service_path))
        request = dra_v1.NodePrepareResourcesRequest(
            claims=[dra_v1.Claim(namespace=namespace, uid=uid, name=name)]
        )

        def call() -> None:
            with Channel(plugin.service_path) as channel:
                channel.unary(paths.DRA_V1_PREPARE, request, dra_v1.NodePrepareResourcesResponse, timeout=60)

        threading.Thread(target=_ignore_errors, args=(call,), daemon=True).start()
        if not self.entered.wait(30):
            raise TimeoutError("the prepare hook never began")

    def close(self) -> None:
        self.release.set()
        for peer in self.peers:
            peer.close()
        if self._silent is not None:
            self._silent.close()
        if self.emulator is not None:
            self.emulator.stop()
        if self.bed is not None:
            self.bed.stop()


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
