"""A DRA driver for two "GPUs" and, from the same Device data, a device plugin.

Run it on a node as a DaemonSet (deploy/dra/), or locally against the test
API server and a kubelet stand-in (see docs/dra.md):
    NODE_NAME=node-1 SDPLITE_KUBE_URL=http://127.0.0.1:8001 python examples/dra_gpu.py
A pod whose ResourceClaim asks the DeviceClass gpu.example.com for a device
gets /dev/gpuN and GPU=N. With SDPLITE_ALSO_DEVICE_PLUGIN=1 the same devices
are also served as the extended resource example.com/gpu (through
plugins_registry), in the same process: `sdplite.run(a, b)`.
"""

import logging
import os

import sdplite
from sdplite import Device, DeviceNode, dra

log = logging.getLogger("dra_gpu")


def find_gpus():
    return [
        Device(
            f"gpu-{i}",
            nodes=[DeviceNode("/dev/null", f"/dev/gpu{i}")],
            envs={"GPU": str(i)},
            attributes={"index": i, "model": "SuperGPU", "driverVersion": dra.Version("1.0.0")},
            capacity={"memory": "16Gi"},
        )
        for i in range(2)
    ]


def prepare(claim):
    # Anything the node must do before a container may use the devices goes here;
    # returning None hands each device's own envs, nodes and mounts to the container.
    log.info("preparing %s/%s: %s", claim.namespace, claim.name, [d.name for d in claim.devices])


def unprepare(claim):
    log.info("unpreparing %s/%s", claim.namespace, claim.name)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    driver = dra.build("gpu.example.com", prepare, unprepare, devices=find_gpus)
    if os.environ.get("SDPLITE_ALSO_DEVICE_PLUGIN"):
        plugin = sdplite.build("example.com/gpu", "gpu-dp.sock", find_gpus, registration="plugins_registry")
        sdplite.run(plugin, driver)
    else:
        driver.run()
