"""What the three benchmark plugins share: arguments, devices, the allocation rule, the control line.

Everything here is standard library only, so it costs each plugin the same
import time and memory, and nothing in it favours one gRPC stack. The plugin
scripts keep only what differs: how the stack is driven.

The harness steers a plugin through its stdin/stdout (one line each way), on
one thread the plugin starts for that purpose; the harness does not count
that thread in the figures. End of stdin means "stop": the plugin sends
itself SIGTERM, which each plugin handles the way its stack does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
from types import ModuleType
from typing import Any, Callable

#: Device IDs are 40 characters ("dev-" and 36 digits), as the issue asks.
ID_WIDTH = 36
#: Where the allocation puts each device, and the env var listing the IDs.
DEVICE_DIR = "/dev/bench/"
ENV_NAME = "BENCH_DEVICES"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
REGISTER_TIMEOUT = 10.0

REGISTER = "/v1beta1.Registration/Register"
GET_DEVICE_PLUGIN_OPTIONS = "/v1beta1.DevicePlugin/GetDevicePluginOptions"
LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"
ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
PRE_START_CONTAINER = "/v1beta1.DevicePlugin/PreStartContainer"


def device_ids(count: int) -> list[str]:
    """``count`` distinct 40-character IDs; the harness learns them from ListAndWatch."""
    return [f"dev-{i:0{ID_WIDTH}d}" for i in range(count)]


def check_allocatable(healthy: dict[str, bool], ids: list[str]) -> str:
    """The one check every plugin makes: '' if all IDs are known and healthy, else why not."""
    bad = [i for i in ids if not healthy.get(i, False)]
    return f"unknown or unhealthy devices {bad}" if bad else ""


def protobuf_devices(pb: ModuleType, ids: list[str]) -> list[Any]:
    """The grpcio and grpclib plugins' device list: healthy ``Device`` messages on NUMA node 0."""
    return [pb.Device(ID=i, health=HEALTHY, topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=0)])) for i in ids]


def add_container_allocation(pb: ModuleType, response: Any, ids: list[str]) -> None:
    """The grpcio and grpclib plugins' answer for one container, added to an AllocateResponse."""
    paths = [DEVICE_DIR + i for i in ids]
    response.container_responses.add(
        envs={ENV_NAME: ",".join(ids)},
        devices=[pb.DeviceSpec(container_path=p, host_path=p, permissions="rw") for p in paths],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a benchmark device plugin")
    parser.add_argument("--dir", required=True, help="device-plugins directory (holds kubelet.sock)")
    parser.add_argument("--socket", required=True, help="our socket's file name in --dir")
    parser.add_argument("--resource", default="bench.example.com/dev")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument(
        "--poll", type=float, default=0.1, help="restart polling interval (grpcio and grpclib plugins)"
    )
    parser.add_argument("--profile", default="", help="sdplite plugin only: write a cProfile here")
    return parser.parse_args(argv)


def load_deviceplugin_pb2() -> ModuleType:
    """The generated v1beta1 messages, loaded without importing the sdplite package.

    A grpcio or grpclib plugin ships its own ``deviceplugin_pb2``; importing
    it from ``sdplite.api`` would also import sdplite and h2 and spoil the
    import-time and memory figures. So the same generated file is loaded by
    path, as the plugin's own module.
    """
    spec = importlib.util.find_spec("sdplite")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sdplite is not installed: the generated messages live in sdplite/api")
    path = os.path.join(list(spec.submodule_search_locations)[0], "api", "deviceplugin_pb2.py")
    module_spec = importlib.util.spec_from_file_location("deviceplugin_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["deviceplugin_pb2"] = module
    module_spec.loader.exec_module(module)
    return module


#: ``set_health(index, healthy)``: change one device and return the monotonic time publishing began.
SetHealth = Callable[[int, bool], float]


class Control:
    """The harness's command line on stdin: ``health <index> <0|1>`` answered with ``ok <time>``.

    ``threads`` answers ``ok name=tid ...`` for every Python thread, so that
    ``profiling.py`` can read each thread's CPU time from /proc.

        The time is ``time.monotonic()`` taken where the plugin starts publishing;
        CLOCK_MONOTONIC is one clock for every process on the machine, so the
        harness can subtract it from the time the kubelet stand-in received the
        new list.
    """

    def __init__(self, set_health: SetHealth) -> None:
        self.set_health = set_health
        self.thread = threading.Thread(target=self._run, name="bench-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if words[0] == "health":
                    started = self.set_health(int(words[1]), words[2] == "1")
                    reply = f"ok {started!r}"
                elif words[0] == "threads":
                    named = (f"{t.name.replace(' ', '_')}={t.native_id}" for t in threading.enumerate())
                    reply = "ok " + " ".join(named)
                else:
                    reply = f"err unknown command {words[0]!r}"
            except Exception as exc:  # the harness shows it; the plugin keeps running
                reply = f"err {type(exc).__name__}: {exc}"
            sys.stdout.write(reply + "\n")
            sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGTERM)
