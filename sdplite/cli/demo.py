"""``sdplite demo``: the whole story in a few seconds, in a temporary directory.

A kubelet emulator and an example plugin run side by side; the demo shows
the registration, the device list, a health change, an allocation with what
the container gets, a kubelet restart and the re-registration.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from typing import Any

from ..devices import Device, DeviceNode, Mount
from ..impl import Watch
from ..plugin import build
from ..testing import KubeletEmulator

RESOURCE = "example.com/gpu"


class DemoGpus:
    """Four pretend GPUs on two NUMA nodes, each with a device node, a mount and a CDI name."""

    def __init__(self) -> None:
        self.devices = [
            Device(
                f"gpu-{i}",
                numa_nodes=[i // 2],
                nodes=[DeviceNode("/dev/null", f"/dev/demo-gpu{i}")],
                mounts=[Mount("/usr/share/zoneinfo", "/opt/demo-gpu/lib")],
                envs={"DEMO_VISIBLE_GPUS": f"gpu-{i}"},
                cdi_devices=[f"example.com/gpu=gpu-{i}"],
            )
            for i in range(4)
        ]

    def list_and_watch(self, watch: Watch) -> None:
        watch.send(self.devices)
        watch.wait()

    def get_preferred_allocation(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        """Prefer devices on one NUMA node."""
        by_node: dict[int, list[str]] = {}
        for device in self.devices:
            if device.id in available:
                by_node.setdefault(device.numa_nodes[0], []).append(device.id)
        for ids in by_node.values():
            if len(ids) >= size:
                return ids[:size]
        return available[:size]

    def allocate(self, device_ids: list[str]) -> Any:
        return None  # the default: built from each device's data

    def refresh(self) -> None:
        pass


def _show_allocation(say: Any, allocation: Any) -> None:
    for key, value in sorted(allocation.envs.items()):
        say(f"      env     {key}={value}")
    for spec in allocation.devices:
        say(f"      device  {spec.host_path} -> {spec.container_path} ({spec.permissions})")
    for mount in allocation.mounts:
        say(f"      mount   {mount.host_path} -> {mount.container_path}{' (ro)' if mount.read_only else ''}")
    for cdi in allocation.cdi_devices:
        say(f"      cdi     {cdi.name}")


def run(args: argparse.Namespace) -> int:
    def say(text: str = "") -> None:
        print(text, flush=True)

    if args.dra:
        from . import demo_dra  # here: the device-plugin demo need not load DRA

        return demo_dra.run(say)

    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
    directory = tempfile.mkdtemp(prefix="sdplite-demo-")
    emulator = KubeletEmulator(directory).start()
    plugin = build(RESOURCE, "demo-gpu.sock", DemoGpus(), plugin_dir=directory)
    try:
        say(f"sdplite demo, in {directory}")
        say(
            "1. a kubelet emulator serves kubelet.sock; the plugin starts, serves demo-gpu.sock and registers"
        )
        plugin.start()
        resource = emulator.wait_for_registration(RESOURCE)
        options = resource.options
        say(
            f"   registered {RESOURCE} at {resource.endpoint} (get_preferred_allocation="
            f"{options.get_preferred_allocation_available}, pre_start_required={options.pre_start_required})"
        )
        resource = emulator.wait_for_devices(RESOURCE, count=4)
        say("2. the device list the kubelet received (ListAndWatch):")
        for device in resource.devices:
            numa = ",".join(str(n.ID) for n in device.topology.nodes)
            say(f"   {device.ID:8} {device.health:10} NUMA {numa}")
        say("3. a health check fails: gpu-1 goes Unhealthy")
        plugin.set_health("gpu-1", False)
        resource = emulator.wait_for_devices(RESOURCE, healthy=3)
        say(
            f"   kubelet now counts {len(resource.healthy)} healthy, {len(resource.unhealthy)} unhealthy: "
            f"{', '.join(resource.unhealthy)}"
        )
        say("4. a pod asks for 2 GPUs: GetPreferredAllocation, then Allocate")
        admission = emulator.admit(RESOURCE, 2)
        say(f"   plugin preferred {admission.preferred}; the container gets {admission.device_ids}:")
        _show_allocation(say, admission.response)
        say("5. the kubelet restarts: connections drop, every socket in the directory is deleted")
        started = time.monotonic()
        emulator.restart()
        emulator.wait_for_registration(RESOURCE, count=2)
        resource = emulator.wait_for_devices(RESOURCE, count=4)
        say(
            f"   the plugin noticed, served a fresh socket and registered again in "
            f"{(time.monotonic() - started) * 1000:.0f} ms; {len(resource.healthy)} healthy devices listed"
        )
        say("done.")
        return 0
    finally:
        plugin.stop()
        emulator.stop()
        shutil.rmtree(directory, ignore_errors=True)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="see a plugin and a kubelet emulator at work, in a few seconds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dra",
        action="store_true",
        help="a DRA driver instead: registration, ResourceSlice, a claim prepared, health, kubelet restart",
    )
    parser.set_defaults(run=run)
