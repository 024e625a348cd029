"""The kubelet's protobuf messages and the names that go with them.

- ``deviceplugin_pb2``: the device plugin API, proto package ``v1beta1``
  (services Registration and DevicePlugin).
- ``pluginregistration_pb2``: plugin-watcher registration, package ``pluginregistration``.
- ``podresources_pb2``: the kubelet's pod-resources API, package ``v1``.
- :mod:`.paths`: method paths, versions, health values, sockets and directories.

The ``*_pb2`` modules are generated from ``proto/`` by ``proto/generate.py`` (see
``proto/README.md``) and import on protobuf 4.25 through 7.x. Do not edit them.
"""

from typing import TYPE_CHECKING, Any

from . import deviceplugin_pb2, paths, pluginregistration_pb2

if TYPE_CHECKING:
    from . import podresources_pb2

__all__ = ["deviceplugin_pb2", "paths", "pluginregistration_pb2", "podresources_pb2"]


def __getattr__(name: str) -> Any:
    # podresources_pb2 is only for sdplite.podresources (a client, not a plugin):
    # loaded on first use, so a plugin process does not build its descriptors.
    if name == "podresources_pb2":
        import importlib

        return importlib.import_module(".podresources_pb2", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
