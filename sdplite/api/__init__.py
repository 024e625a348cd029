"""The kubelet's protobuf messages and the names that go with them.

- ``deviceplugin_pb2``: the device plugin API, proto package ``v1beta1``
  (services Registration and DevicePlugin).
- ``pluginregistration_pb2``: plugin-watcher registration, package ``pluginregistration``.
- ``podresources_pb2``: the kubelet's pod-resources API, package ``v1``.
- ``dra_v1_pb2``, ``dra_v1beta1_pb2``: the DRA kubelet plugin API (service
  DRAPlugin), packages ``k8s.io.kubelet.pkg.apis.dra.v1`` and ``...v1beta1``.
- ``drahealth_v1_pb2``, ``drahealth_v1alpha1_pb2``: DRA device health (service
  DRAResourceHealth), packages ``v1`` and ``v1alpha1``.
- :mod:`.paths`: method paths, versions, health values, sockets and directories.

The ``*_pb2`` modules are generated from ``proto/`` by ``proto/generate.py`` (see
``proto/README.md``) and import on protobuf 4.25 through 7.x. Do not edit them.
"""

from typing import TYPE_CHECKING, Any

from . import deviceplugin_pb2, paths, pluginregistration_pb2

if TYPE_CHECKING:
    from . import dra_v1_pb2, dra_v1beta1_pb2, drahealth_v1_pb2, drahealth_v1alpha1_pb2, podresources_pb2

__all__ = [
    "deviceplugin_pb2",
    "dra_v1_pb2",
    "dra_v1beta1_pb2",
    "drahealth_v1_pb2",
    "drahealth_v1alpha1_pb2",
    "paths",
    "pluginregistration_pb2",
    "podresources_pb2",
]

_LAZY = ("podresources_pb2", "dra_v1_pb2", "dra_v1beta1_pb2", "drahealth_v1_pb2", "drahealth_v1alpha1_pb2")


def __getattr__(name: str) -> Any:
    # podresources_pb2 is only for sdplite.podresources (a client, not a plugin),
    # the DRA modules only for sdplite.dra: loaded on first use, so a device
    # plugin process does not build their descriptors.
    if name in _LAZY:
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
