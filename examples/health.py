"""A plugin whose health checker marks devices unhealthy and healthy again.

Four "gpus"; a device is unhealthy while a file named `<id>.fault` exists in
$HEALTH_STATE_DIR (default /run/sdplite-health). Try:
    touch /run/sdplite-health/gpu-1.fault   # gpu-1 goes Unhealthy
    rm /run/sdplite-health/gpu-1.fault      # and Healthy again
"""

import logging
import os

from sdplite import Allocation, Device, Watch, build

STATE_DIR = os.environ.get("HEALTH_STATE_DIR", "/run/sdplite-health")
IDS = [f"gpu-{i}" for i in range(4)]


class HealthCheckedGpus:
    def check(self):
        return [
            Device(i, healthy=not os.path.exists(os.path.join(STATE_DIR, f"{i}.fault")), numa_nodes=[0])
            for i in IDS
        ]

    def list_and_watch(self, watch: Watch) -> None:
        while True:
            watch.send(self.check())  # only changes reach the kubelet
            if watch.wait(0.2):
                return

    def allocate(self, device_ids):
        return Allocation(envs={"VISIBLE_GPUS": ",".join(device_ids)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    build("example.com/gpu", "health-gpu.sock", HealthCheckedGpus()).run()
