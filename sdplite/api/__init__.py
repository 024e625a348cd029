"""The kubelet's protobuf messages and the names that go with them.

- ``deviceplugin_pb2``: the device plugin API, proto package ``v1beta1``
  (services Registration and DevicePlugin).
- ``pluginregistration_pb2``: plugin-watcher registration, package ``pluginregistration``.
- ``podresources_pb2``: the kubelet's pod-resources API, package ``v1``.
- :mod:`.paths`: method paths, versions, health values, sockets and directories.

The ``*_pb2`` modules are generated from ``proto/`` by ``proto/generate.py`` (see
``proto/README.md``) and import on protobuf 4.25 through 7.x. Do not edit them.
"""

from . import deviceplugin_pb2, paths, pluginregistration_pb2, podresources_pb2

__all__ = ["deviceplugin_pb2", "paths", "pluginregistration_pb2", "podresources_pb2"]
