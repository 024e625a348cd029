"""The configuration of ``sdplite serve``, checked field by field before anything starts.

sdplite's own format (generic-device-plugin's is read by ``serve_gdp``), JSON,
for example::

    {
      "plugin_dir": "/var/lib/kubelet/device-plugins",
      "interval": 5,
      "metrics_port": 9400,
      "cdi": true,
      "resources": [
        {"name": "example.com/serial", "paths": ["/dev/ttyUSB*"], "count": 1,
         "mount": false, "permissions": "rw", "container_path": "/dev/serial/"}
      ]
    }

``metrics_port`` serves every resource's metrics and ``/healthz`` on that
port; ``cdi`` writes a CDI spec per resource into ``$SDPLITE_CDI_DIR`` or
``/var/run/cdi`` and names the devices in Allocate. Both are off when absent.

``container_path`` is where the container sees each file (default: the same
path); ending in ``/`` it is a directory and the file keeps its name. With
``mount``, ``permissions`` without ``w`` makes the bind mount read-only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..devices import Device, DeviceNode, Mount
from ..discovery import Group, glob_paths
from ..logtext import cut_list
from ..naming import InvalidNameError, validate_resource_name

log = logging.getLogger("sdplite")

__all__ = [
    "ConfigError",
    "ResourceConfig",
    "GroupResource",
    "ServeConfig",
    "parse_config",
    "GlobDevices",
    "device_id",
    "socket_name",
]


class ConfigError(ValueError):
    """A configuration mistake; the message names the field and the fix."""


def socket_name(resource: str) -> str:
    return "sdplite-" + resource.replace("/", "_") + ".sock"


def check_absolute(path: str, where: str) -> str:
    if not os.path.isabs(path):
        raise ConfigError(f"{where} must be an absolute path (got {path!r})")
    return path


@dataclass(frozen=True)
class ResourceConfig:
    """A resource in sdplite's format: one device per file its globs match."""

    name: str
    paths: tuple[str, ...]
    count: int = 1
    mount: bool = False
    permissions: str = "rw"
    container_path: str = ""

    @property
    def socket_name(self) -> str:
        return socket_name(self.name)


@dataclass(frozen=True)
class GroupResource:
    """A resource of :mod:`sdplite.discovery` groups (generic-device-plugin's format)."""

    name: str
    groups: tuple[Group, ...]

    @property
    def socket_name(self) -> str:
        return socket_name(self.name)


Resource = Union[ResourceConfig, GroupResource]


@dataclass(frozen=True)
class ServeConfig:
    resources: tuple[Resource, ...]
    plugin_dir: Optional[str] = None
    interval: float = 5.0
    metrics_port: Optional[int] = None
    cdi: bool = False
    metrics_host: str = ""
    log_level: Optional[int] = None


def _resource(raw: Any, where: str) -> ResourceConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where} must be an object like {{"name": ..., "paths": [...]}}')
    unknown = set(raw) - {"name", "paths", "count", "mount", "permissions", "container_path"}
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {sorted(unknown)}: allowed are name, paths, "
            f"count, mount, permissions, container_path"
        )
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f'{where}.name must be a resource name such as "example.com/serial" (got {name!r})')
    try:
        validate_resource_name(name)
    except InvalidNameError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    paths = raw.get("paths")
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f'{where}.paths must be a non-empty list of path globs such as ["/dev/ttyUSB*"]')
    if not all(os.path.isabs(p) for p in paths):
        raise ConfigError(f"{where}.paths must be absolute paths (got {paths})")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
        raise ConfigError(
            f"{where}.count must be an integer from 1 to 1000 (got {count!r}): "
            f"how many containers may share each device"
        )
    mount = raw.get("mount", False)
    if not isinstance(mount, bool):
        raise ConfigError(f"{where}.mount must be true or false (got {mount!r})")
    permissions = raw.get("permissions", "rw")
    if not isinstance(permissions, str) or not permissions or set(permissions) - set("rwm"):
        raise ConfigError(
            f'{where}.permissions must be letters from r, w, m such as "rw" (got {permissions!r})'
        )
    container_path = raw.get("container_path", "")
    if not isinstance(container_path, str) or (container_path and not os.path.isabs(container_path)):
        raise ConfigError(
            f'{where}.container_path must be an absolute path such as "/dev/serial/" (got {container_path!r})'
        )
    return ResourceConfig(name, tuple(paths), count, mount, permissions, container_path)


def parse_config(raw: Any) -> ServeConfig:
    if not isinstance(raw, dict):
        raise ConfigError('the configuration must be an object with a "resources" list')
    unknown = set(raw) - {"resources", "plugin_dir", "interval", "metrics_port", "cdi"}
    if unknown:
        raise ConfigError(
            f"unknown field(s) {sorted(unknown)}: allowed are resources, plugin_dir, interval, "
            f"metrics_port, cdi"
        )
    resources = raw.get("resources")
    if not isinstance(resources, list) or not resources:
        raise ConfigError(
            "resources must be a non-empty list, e.g. "
            '[{"name": "example.com/serial", "paths": ["/dev/ttyUSB*"]}]'
        )
    parsed = tuple(_resource(r, f"resources[{i}]") for i, r in enumerate(resources))
    names = [r.name for r in parsed]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"resources: {name!r} is listed twice; merge its paths into one entry")
    interval = raw.get("interval", 5.0)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
        raise ConfigError(f"interval must be a positive number of seconds (got {interval!r})")
    plugin_dir = raw.get("plugin_dir")
    if plugin_dir is not None and (not isinstance(plugin_dir, str) or not os.path.isabs(plugin_dir)):
        raise ConfigError(f"plugin_dir must be an absolute directory path (got {plugin_dir!r})")
    metrics_port = raw.get("metrics_port")
    if metrics_port is not None and (
        not isinstance(metrics_port, int) or isinstance(metrics_port, bool) or not 0 < metrics_port < 65536
    ):
        raise ConfigError(f"metrics_port must be a TCP port number from 1 to 65535 (got {metrics_port!r})")
    cdi = raw.get("cdi", False)
    if not isinstance(cdi, bool):
        raise ConfigError(f"cdi must be true or false (got {cdi!r})")
    return ServeConfig(parsed, plugin_dir, float(interval), metrics_port, cdi)


class GlobDevices:
    """``get_devices`` for one resource: the files its globs match, health by existence.

    A path seen once stays listed: while it is missing it is Unhealthy, so the
    kubelet's capacity does not jump around when a device blinks.
    """

    def __init__(self, config: ResourceConfig, root: str = "/") -> None:
        self.config = config
        self.root = root
        self._seen: dict[str, None] = {}  # ordered set of paths ever matched
        self._empty_warned = False

    def update(self, config: ResourceConfig) -> None:
        """Follow a new configuration of the same resource (paths seen before are forgotten)."""
        self.config = config
        self._seen = {}
        self._empty_warned = False

    def _device_ids(self, path: str) -> list[str]:
        base = device_id(path)
        if self.config.count == 1:
            return [base]
        return [f"{base}-{share}" for share in range(self.config.count)]

    def _allocation(self, path: str) -> dict[str, Any]:
        target = self.config.container_path or path
        if target.endswith("/"):
            target += os.path.basename(path)
        if self.config.mount:
            return {"mounts": [Mount(path, target, read_only="w" not in self.config.permissions)]}
        return {"nodes": [DeviceNode(path, target, self.config.permissions)]}

    def __call__(self) -> list[Device]:
        for pattern in self.config.paths:
            for path in glob_paths(pattern, self.root):
                self._seen.setdefault(path, None)
        devices = []
        for path in self._seen:
            present = os.path.exists(os.path.join(self.root, path.lstrip("/")))
            extra = self._allocation(path)
            devices += [Device(i, healthy=present, **extra) for i in self._device_ids(path)]
        self._warn_if_empty(devices)
        return devices

    def _warn_if_empty(self, devices: list[Device]) -> None:
        """One warning when the globs stop matching anything (and none while they keep not matching)."""
        if devices:
            self._empty_warned = False
            return
        if self._empty_warned:
            return
        self._empty_warned = True
        log.warning(
            "%s: no file matches %s, so the resource has 0 devices: check the paths "
            "(and that the host's /dev is mounted into the container)",
            self.config.name,
            cut_list(self.config.paths),
        )


def device_id(path: str) -> str:
    """A device ID for a path: readable, and two paths never share one.

    ``/`` becomes ``_``; a ``_`` or ``:`` already in the path is written
    ``:_`` / ``::``, so ``/c/a_b`` (``c_a:_b``) and ``/c/a/b`` (``c_a_b``) stay
    apart. Only characters a CDI device name may hold are added, so
    ``--cdi`` can name every device of an ordinary path.
    """
    escaped = path.strip("/").replace(":", "::").replace("_", ":_")
    return escaped.replace("/", "_")
