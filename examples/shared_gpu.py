"""A shared-GPU plugin: each GPU is advertised as 4 replicas, checked by a health check, and
described to the container runtime by a CDI spec.

Two "GPUs", backed by /dev/null and /dev/zero so that it runs anywhere. A GPU is
unhealthy while a file `<id>.fault` exists in $GPU_FAULT_DIR (default
/run/sdplite-gpu); the file's text is the reason. Try:
    echo "Xid 79: GPU has fallen off the bus" > /run/sdplite-gpu/gpu-1.fault
    sdplite inspect --status          # gpu-1 Unhealthy, and why (with SDPLITE_STATUS_FILE set)
    rm /run/sdplite-gpu/gpu-1.fault   # Healthy again after two passed checks
The CDI spec goes to $SDPLITE_CDI_DIR (default /var/run/cdi); metrics are served
on $METRICS_PORT when it is set.
"""

import logging
import os

from sdplite import Device, DeviceNode, build
from sdplite.healthcheck import HealthCheck

FAULT_DIR = os.environ.get("GPU_FAULT_DIR", "/run/sdplite-gpu")
GPUS = {"gpu-0": ("/dev/null", 0), "gpu-1": ("/dev/zero", 1)}


def get_devices():
    return [
        Device(
            gpu,
            numa_nodes=[numa],
            nodes=[DeviceNode(path, f"/dev/{gpu}"), DeviceNode("/dev/full", "/dev/gpuctl")],
            envs={"VISIBLE_GPUS": gpu},
        )
        for gpu, (path, numa) in GPUS.items()
    ]


def check(device):
    """Raise while a fault file exists: its text is the reason."""
    fault = os.path.join(FAULT_DIR, f"{device.id}.fault")
    if os.path.exists(fault):
        with open(fault) as handle:
            raise RuntimeError(handle.read().strip() or "fault reported")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    port = os.environ.get("METRICS_PORT")
    build(
        "example.com/gpu",
        "shared-gpu.sock",
        get_devices,
        replicas=4,  # gpu-0::0 ... gpu-0::3: four containers share each GPU
        health_check=HealthCheck(check, interval=float(os.environ.get("CHECK_INTERVAL", "10")), failures=2),
        cdi=True,
        metrics_port=int(port) if port else None,
    ).run()
