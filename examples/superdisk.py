"""The smallest useful plugin: two "superdisks", always healthy.

Run it on a node (or against `sdplite kubelet`) with:
    python examples/superdisk.py
A container that asks for `example.com/superdisk: 1` gets /dev/superdiskN.
"""

import logging

from sdplite import Device, DeviceNode, build


def get_devices():
    return [Device(f"superdisk-{i}", nodes=[DeviceNode("/dev/null", f"/dev/superdisk{i}")]) for i in range(2)]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    build("example.com/superdisk", "superdisk.sock", get_devices).run()
