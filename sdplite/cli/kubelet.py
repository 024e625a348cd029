"""``sdplite kubelet``: the kubelet emulator in the foreground, for developing a plugin.

Serves kubelet.sock in --dir and prints every registration, device update and
disconnection as it happens. Point your plugin at the same directory (for
sdplite plugins: SDPLITE_PLUGIN_DIR=DIR). SIGHUP simulates a kubelet restart;
Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from typing import Any

from ..testing import KubeletEmulator
from ..testing.emulator import Resource

DEFAULT_DIR = "/tmp/sdplite-kubelet"


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def _printer(kind: str, name: str, detail: Any) -> None:
    if kind == "registered" and isinstance(detail, Resource):
        options = detail.options
        print(
            f"{_stamp()} registered   {name} endpoint={detail.endpoint} "
            f"preferred_allocation={options.get_preferred_allocation_available} "
            f"pre_start={options.pre_start_required}",
            flush=True,
        )
    elif kind == "devices" and isinstance(detail, Resource):
        unhealthy = detail.unhealthy
        tail = f" unhealthy: {', '.join(unhealthy)}" if unhealthy else ""
        print(
            f"{_stamp()} devices      {name}: {len(detail.devices)} devices, "
            f"{len(detail.healthy)} healthy{tail}",
            flush=True,
        )
    else:
        print(f"{_stamp()} {kind:12} {name}: {detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    directory = os.path.abspath(args.dir)
    stop = threading.Event()
    emulator = KubeletEmulator(directory, on_event=_printer).start()
    restart = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: restart.set())
    print(f"{_stamp()} listening    {emulator.socket} (SIGHUP: restart, Ctrl-C: stop)", flush=True)
    try:
        while not stop.wait(0.2):
            if restart.is_set():
                restart.clear()
                print(f"{_stamp()} restarting   sockets in {directory} are deleted", flush=True)
                emulator.restart()
    finally:
        emulator.stop()
        print(f"{_stamp()} stopped", flush=True)
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "kubelet",
        help="run the kubelet emulator in the foreground",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        default=os.environ.get("SDPLITE_PLUGIN_DIR", DEFAULT_DIR),
        help=f"device-plugins directory to serve kubelet.sock in (default: $SDPLITE_PLUGIN_DIR "
        f"or {DEFAULT_DIR})",
    )
    parser.set_defaults(run=run)
