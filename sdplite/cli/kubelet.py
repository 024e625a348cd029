"""``sdplite kubelet``: the kubelet emulator in the foreground, for developing a plugin.

Serves kubelet.sock in --dir and prints every registration, device update and
disconnection as it happens. Point your plugin at the same directory (for
sdplite plugins: SDPLITE_PLUGIN_DIR=DIR). With --dra-registry DIR it is also the
kubelet's DRA side on that plugins_registry directory: DRA drivers there are
registered and their device health printed as it changes (for sdplite drivers:
SDPLITE_REGISTRY_DIR=DIR). SIGHUP simulates a kubelet restart; Ctrl-C stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from ..testing import KubeletEmulator
from ..testing.emulator import Resource

if TYPE_CHECKING:
    from ..testing.dra_emulator import DraKubeletEmulator

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
    elif kind == "health" and isinstance(detail, dict):
        states = ", ".join(
            f"{device}={state}{f' ({message})' if message else ''}"
            for device, (state, message) in sorted(detail.items())
        )
        print(f"{_stamp()} health       {name}: {states}", flush=True)
    else:
        print(f"{_stamp()} {kind:12} {name}: {detail}", flush=True)


def _check_dir(directory: str) -> str:
    """Why ``directory`` cannot hold kubelet.sock, or ""."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        return f"--dir {directory} is a file, not a directory: give the directory for kubelet.sock"
    parent = os.path.dirname(directory)
    if not os.path.isdir(directory) and not os.path.isdir(parent):
        return f"--dir {directory}: {parent} does not exist: create it first (mkdir -p) or pick another --dir"
    return ""


def run(args: argparse.Namespace) -> int:
    directory = os.path.abspath(args.dir)
    problem = _check_dir(directory)
    if problem:
        print(f"sdplite kubelet: {problem}", file=sys.stderr)
        return 2
    if not os.path.isdir(directory):
        print(f"{_stamp()} created      {directory}", flush=True)
    # The emulator's own notes (a stale kubelet.sock removed, plugin-watcher trouble).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stop = threading.Event()
    try:
        emulator = KubeletEmulator(directory, on_event=_printer).start()
    except (RuntimeError, OSError) as exc:
        print(f"sdplite kubelet: {exc}", file=sys.stderr)
        return 1
    dra: Optional[DraKubeletEmulator] = None
    if args.dra_registry:
        from ..testing.dra_emulator import DraKubeletEmulator as Emulator  # only with DRA

        dra = Emulator(os.path.abspath(args.dra_registry), on_event=_printer).start()
        print(f"{_stamp()} watching     {dra.registry_dir} for DRA drivers", flush=True)
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
                if dra is not None:
                    dra.restart()
    finally:
        if dra is not None:
            dra.stop()
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
    parser.add_argument(
        "--dra-registry",
        metavar="DIR",
        help="also be the kubelet's DRA side on this plugins_registry directory",
    )
    parser.set_defaults(run=run)
