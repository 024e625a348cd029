"""sdplite: Kubernetes device plugins in a few lines of Python, on h2 instead of grpcio.

>>> from sdplite import build
>>> build("example.com/superdisk", "superdisk.sock", get_devices).run()  # doctest: +SKIP
"""

from .devices import Allocation, Device, DeviceListError, DeviceNode, Mount
from .impl import DevicePluginImpl, Watch
from .lifecycle import PluginError
from .naming import InvalidNameError
from .plugin import DEFAULT_PLUGIN_DIR, DevicePlugin, build
from .supervisor import run
from .version import VERSION as __version__
from .wire import GrpcError, StatusCode

__all__ = [
    "DEFAULT_PLUGIN_DIR",
    "Allocation",
    "Device",
    "DeviceListError",
    "DeviceNode",
    "DevicePlugin",
    "DevicePluginImpl",
    "GrpcError",
    "InvalidNameError",
    "Mount",
    "PluginError",
    "StatusCode",
    "Watch",
    "__version__",
    "build",
    "run",
]
