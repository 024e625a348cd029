"""``sdplite demo --dra``: a DRA driver and the kubelet's DRA side at work, in a temporary directory.

The emulated kubelet registers the driver through plugins_registry, the
driver publishes its devices as a ResourceSlice in a stand-in API server, a
claim allocated one device is prepared (and the demo shows what the
container gets), a device turns unhealthy on the health stream, the kubelet
restarts and prepares again (answered from the checkpoint), and the claim is
unprepared.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..devices import Device, DeviceNode, Mount
from ..testing.dra import DraTestbed

DRIVER = "gpu.example.com"


def demo_devices() -> list[Device]:
    return [
        Device(
            f"gpu-{i}",
            nodes=[DeviceNode("/dev/null", f"/dev/demo-gpu{i}")],
            mounts=[Mount("/usr/share/zoneinfo", "/opt/demo-gpu/lib")],
            envs={"DEMO_VISIBLE_GPUS": f"gpu-{i}"},
            attributes={"index": i, "model": "DemoGPU"},
            capacity={"memory": "16Gi"},
        )
        for i in range(2)
    ]


def _attributes(device: dict[str, Any]) -> str:
    values = [f"{k}={next(iter(v.values()))}" for k, v in sorted(device.get("attributes", {}).items())]
    values += [f"{k}={v['value']}" for k, v in sorted(device.get("capacity", {}).items())]
    return " ".join(values)


def _show_container(say: Callable[[str], None], spec_path: str, cdi_ids: list[str]) -> None:
    """What the runtime gives the container: the CDI IDs and, from the spec file written for
    the claim, each one's edits."""
    import json

    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    entries = {f"{spec['kind']}={d['name']}": d["containerEdits"] for d in spec["devices"]}
    say(f"   CDI spec {spec_path} (cdiVersion {spec['cdiVersion']}):")
    for cdi_id in cdi_ids:
        edits = entries.get(cdi_id, {})
        say(f"      cdi     {cdi_id}")
        for env in edits.get("env", []):
            say(f"      env     {env}")
        for node in edits.get("deviceNodes", []):
            source = node.get("hostPath", node["path"])
            say(f"      device  {source} -> {node['path']} ({node.get('permissions', '')})")
        for mount in edits.get("mounts", []):
            say(f"      mount   {mount['hostPath']} -> {mount['containerPath']}")


def run(say: Callable[[str], None]) -> int:
    from .. import dra

    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
    with DraTestbed() as bed:
        driver = dra.build(DRIVER, devices=demo_devices(), **bed.options())
        try:
            say(f"sdplite demo --dra, in {bed.directory}")
            say("1. the driver serves its DRA socket, then its registration socket; the kubelet finds it")
            driver.start()
            info = bed.kubelet.wait_for_registration(DRIVER)
            say(f"   advertised {', '.join(info.versions)}")
            say(f"   the kubelet took {info.version}.DRAPlugin and {info.health_version} health")
            say(f"   and dialled {info.endpoint}")
            driver.wait_published(30)
            (published,) = list(bed.api.slices.values())
            pool = published["spec"]["pool"]
            name = published["metadata"]["name"]
            say(f"2. ResourceSlice {name} (pool {pool['name']}, generation {pool['generation']}):")
            for device in published["spec"]["devices"]:
                say(f"   {device['name']:8} {_attributes(device)}")
            claim = bed.claim(DRIVER, ["gpu-1"], name="demo-claim", request="gpu")
            say(f"3. the scheduler allocated gpu-1 to ResourceClaim {claim[0]}/{claim[2]} (request 'gpu')")
            result = bed.prepare(DRIVER, claim)[claim[1]]
            say("4. NodePrepareResources: the kubelet records these devices for the claim:")
            for requests, pool_name, device_name, _ in result["devices"]:
                say(f"   {pool_name}/{device_name} for request {','.join(requests)}")
            cdi_ids = [i for device in result["devices"] for i in device[3]]
            say("   and hands the runtime these CDI IDs; a container that uses the claim gets:")
            assert driver.cdi is not None
            _show_container(say, driver.cdi.path(claim[1]), cdi_ids)
            say("5. a health check fails: gpu-1 goes unhealthy, with a reason, on the health stream")
            driver.set_health("gpu-1", False, "fan stopped")
            health = bed.kubelet.wait_for_health(DRIVER, lambda h: h.get("gpu-1", ("",))[0] == "UNHEALTHY")
            for name, (state, message) in sorted(health.items()):
                say(f"   {name:8} {state:10} {message}")
            # The kubelet names a device by its first CDI ID, else driver/pool/device.
            resource = cdi_ids[0] if cdi_ids else f"{DRIVER}/{bed.node}/gpu-1"
            say(f"   (pod status: allocatedResourcesStatus 'claim:{claim[2]}/gpu': {resource} Unhealthy)")
            say("6. the kubelet restarts: it registers the driver again and repeats NodePrepareResources")
            started = time.monotonic()
            bed.kubelet.restart()
            bed.kubelet.wait_for_registration(DRIVER, count=2)
            again = bed.prepare(DRIVER, claim)[claim[1]]
            same = (
                "the same answer, from the checkpoint" if again == result else f"a different answer: {again}"
            )
            say(f"   registered again in {(time.monotonic() - started) * 1000:.0f} ms; prepare gave {same}")
            errors = bed.unprepare(DRIVER, claim)
            say(f"7. the pod ends: NodeUnprepareResources -> {'ok' if errors == {claim[1]: ''} else errors}")
            say("done.")
            return 0
        finally:
            driver.stop()
