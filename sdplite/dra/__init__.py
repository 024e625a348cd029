"""Dynamic Resource Allocation: a DRA kubelet plugin in a few lines, on sdplite's own gRPC.

>>> from sdplite import Device, dra
>>> gpus = [Device("gpu-0", attributes={"model": "X1"}, capacity={"memory": "80Gi"})]
>>> dra.build("gpu.example.com", devices=gpus, node_name="node-1").run()  # doctest: +SKIP

The pieces, one job each: :mod:`.plugin` (``build`` and the plugin object),
:mod:`.controller` (serving and plugin-watcher registration under the
supervisor), :mod:`.service` (the kubelet's gRPC services), :mod:`.driver`
(prepare/unprepare rules), :mod:`.claims` (ResourceClaims and the
checkpoint), :mod:`.devices` (devices, health and its streams),
:mod:`.slices` (ResourceSlices) and :mod:`.kube` (the API-server client).
See docs/dra.md.
"""

from .claims import AllocatedDevice, Claim, ClaimError
from .kube import KubeClient, KubeError
from .plugin import DRAPlugin, build
from .slices import Version

__all__ = [
    "AllocatedDevice",
    "Claim",
    "ClaimError",
    "DRAPlugin",
    "KubeClient",
    "KubeError",
    "Version",
    "build",
]
