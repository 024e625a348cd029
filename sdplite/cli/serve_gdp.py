"""squat/generic-device-plugin's configuration language, read as it is by ``sdplite serve``.

A file with a ``devices`` list (YAML or JSON, as that project's ``--config``)
or ``--device`` flags::

    devices:
      - name: capture
        groups:
          - paths:
              - path: /dev/snd/pcmC0D0c
              - path: /dev/snd/controlC0
      - name: ch340
        groups:
          - usb: [{vendor: "1a86", product: "7523"}]
    domain: squat.ai

Each entry becomes ``DOMAIN/NAME`` with :mod:`sdplite.discovery` groups.
Field names match case-insensitively, as that project's config loader does;
anything it does not know is refused by name with the allowed list
(docs/serve.md has the side-by-side table and where sdplite differs).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ..discovery import DEVICE, MOUNT, Group, PathSpec, UsbSpec
from ..naming import InvalidNameError, validate_resource_name
from .serve_config import ConfigError, GroupResource, check_absolute

__all__ = ["DEFAULT_DOMAIN", "LOG_LEVELS", "parse_devices", "parse_file_fields"]

DEFAULT_DOMAIN = "squat.ai"
_DEVICE_NAME = re.compile(r"^[a-z0-9][-a-z0-9]*[a-z0-9]$")
_HEX_ID = re.compile(r"^[0-9A-Fa-f]{1,4}$")

#: generic-device-plugin's --log-level values as logging levels.
LOG_LEVELS = {
    "all": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}

FILE_FIELDS = ("devices", "device", "domain", "plugin-directory", "log-level", "listen")
DEVICE_FIELDS = ("name", "groups")
GROUP_FIELDS = ("paths", "usb", "count")
PATH_FIELDS = ("path", "mountPath", "type", "permissions", "readOnly", "limit", "optional")
USB_FIELDS = ("vendor", "product", "serial")


def fields(raw: Any, allowed: Sequence[str], where: str, example: str) -> dict[str, Any]:
    """``raw``'s fields under their documented spelling; unknown or repeated ones refused."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be an object like {example} (got {type(raw).__name__})")
    spelling = {name.lower(): name for name in allowed}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = spelling.get(str(key).lower())
        if name is None:
            raise ConfigError(f"{where} has an unknown field {key!r}: allowed are {', '.join(allowed)}")
        if name in out:
            raise ConfigError(f"{where} gives {name!r} twice (field names ignore case)")
        out[name] = value
    return out


def _count(value: Any, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise ConfigError(f"{where} must be an integer from 1 to 1000 (got {value!r}): {what}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false (got {value!r})")
    return value


def _path(raw: Any, where: str) -> PathSpec:
    f = fields(raw, PATH_FIELDS, where, '{"path": "/dev/ttyUSB*"}')
    path = f.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f'{where}.path must be a path or glob such as "/dev/ttyUSB*" (got {path!r})')
    path = check_absolute(path.strip(), f"{where}.path")
    mount_path = f.get("mountPath", "")
    if not isinstance(mount_path, str):
        raise ConfigError(f"{where}.mountPath must be a path in the container (got {mount_path!r})")
    mount_path = mount_path.strip()
    if mount_path:
        check_absolute(mount_path, f"{where}.mountPath")
    kind = f.get("type", DEVICE)
    if kind not in (DEVICE, MOUNT):
        raise ConfigError(
            f'{where}.type must be "Device" (a device node) or "Mount" (a bind mount), not {kind!r}'
        )
    permissions = f.get("permissions", "mrw")
    if not isinstance(permissions, str) or not permissions or set(permissions) - set("rwm"):
        raise ConfigError(
            f'{where}.permissions must be letters from r, w, m such as "rw" (got {permissions!r})'
        )
    limit = _count(f.get("limit", 1), f"{where}.limit", "how many devices of the group may share one match")
    try:
        return PathSpec(
            path,
            mount_path,
            kind,
            permissions,
            _bool(f.get("readOnly", False), f"{where}.readOnly"),
            limit,
            _bool(f.get("optional", False), f"{where}.optional"),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}.path: {exc}") from None


def _usb_id(value: Any, where: str) -> int:
    if isinstance(value, str) and _HEX_ID.match(value.strip()):
        return int(value.strip(), 16)
    hint = ' (YAML read a number: quote it, e.g. "1209")' if isinstance(value, int) else ""
    raise ConfigError(f'{where} must be a USB ID in hex such as "1a86"{hint}; got {value!r}')


def _usb(raw: Any, where: str) -> UsbSpec:
    f = fields(raw, USB_FIELDS, where, '{"vendor": "1a86", "product": "7523"}')
    for name in ("vendor", "product"):
        if name not in f:
            raise ConfigError(f'{where} needs "{name}": the USB {name} ID in hex, as lsusb shows it')
    serial = f.get("serial", "")
    if not isinstance(serial, str):
        raise ConfigError(f'{where}.serial must be a string (got {serial!r}: quote it in YAML, e.g. "0001")')
    return UsbSpec(_usb_id(f["vendor"], f"{where}.vendor"), _usb_id(f["product"], f"{where}.product"), serial)


def _list(value: Any, where: str, example: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list, e.g. {example}")
    return value


def _group(raw: Any, where: str) -> Group:
    f = fields(raw, GROUP_FIELDS, where, '{"paths": [{"path": "/dev/video0"}]}')
    if ("paths" in f) == ("usb" in f):
        raise ConfigError(f'{where} needs either "paths" or "usb" (one of them, not both)')
    count = _count(
        f.get("count", 1), f"{where}.count", "how many containers may share each device of the group"
    )
    if "paths" in f:
        items = _list(f["paths"], f"{where}.paths", '[{"path": "/dev/video0"}]')
        return Group(paths=[_path(p, f"{where}.paths[{i}]") for i, p in enumerate(items)], count=count)
    items = _list(f["usb"], f"{where}.usb", '[{"vendor": "1a86", "product": "7523"}]')
    return Group(usb=[_usb(u, f"{where}.usb[{i}]") for i, u in enumerate(items)], count=count)


def _device(raw: Any, where: str, domain: str) -> GroupResource:
    example = '{"name": "serial", "groups": [{"paths": [{"path": "/dev/ttyUSB*"}]}]}'
    if isinstance(raw, Mapping) and "count" in {str(k).lower() for k in raw}:
        raise ConfigError(
            f'{where}.count: "count" belongs in each group, e.g. '
            f'{{"groups": [{{"count": 10, "paths": ...}}]}} (generic-device-plugin ignores it here)'
        )
    f = fields(raw, DEVICE_FIELDS, where, example)
    name = f.get("name")
    if not isinstance(name, str) or not _DEVICE_NAME.match(name.strip()):
        raise ConfigError(
            f"{where}.name must be 2 or more lower-case letters, digits and '-' such as \"serial\" "
            f"(the resource is DOMAIN/NAME); got {name!r}"
        )
    try:
        full = validate_resource_name(f"{domain}/{name.strip()}")
    except InvalidNameError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    groups = _list(f.get("groups"), f"{where}.groups", '[{"paths": [{"path": "/dev/ttyUSB*"}]}]')
    return GroupResource(full, tuple(_group(g, f"{where}.groups[{i}]") for i, g in enumerate(groups)))


def _listen(value: Any) -> tuple[str, int]:
    """generic-device-plugin's ``listen`` address, ``[HOST]:PORT``, as sdplite's metrics host and port."""
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'listen must be an address such as ":8080" or "127.0.0.1:8080" (got {value!r})')
    return host.strip("[]"), int(port)


def parse_devices(raw: Any, domain: Optional[str], where: str = "devices") -> tuple[GroupResource, ...]:
    """The ``devices`` list (or the ``--device`` values) as resources named ``DOMAIN/NAME``."""
    domain = DEFAULT_DOMAIN if domain is None else domain
    example = '[{"name": "serial", "groups": [{"paths": [{"path": "/dev/ttyUSB*"}]}]}]'
    entries = _list(raw, where, example)
    resources = tuple(_device(d, f"{where}[{i}]", domain) for i, d in enumerate(entries))
    names = [r.name for r in resources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}: {name!r} is listed twice; put all its groups in one entry")
    return resources


def parse_file_fields(raw: Any, domain: Optional[str]) -> dict[str, Any]:
    """A generic-device-plugin config file: its resources and the settings sdplite uses."""
    f = fields(raw, FILE_FIELDS, "the configuration", '{"devices": [...]}')
    if "devices" in f and "device" in f:
        raise ConfigError('give "devices" or its alias "device", not both')
    file_domain = f.get("domain")
    if file_domain is not None and not isinstance(file_domain, str):
        raise ConfigError(f"domain must be a DNS name such as squat.ai (got {file_domain!r})")
    out: dict[str, Any] = {
        "resources": parse_devices(f.get("devices", f.get("device")), domain or file_domain)
    }
    level = f.get("log-level")
    if level is not None:
        if level not in LOG_LEVELS:
            raise ConfigError(f"log-level must be one of {', '.join(LOG_LEVELS)} (got {level!r})")
        out["log_level"] = LOG_LEVELS[level]
    if "listen" in f:
        out["metrics_host"], out["metrics_port"] = _listen(f["listen"])
    plugin_dir = f.get("plugin-directory")
    if plugin_dir is not None:
        if not isinstance(plugin_dir, str):
            raise ConfigError(f"plugin-directory must be an absolute directory path (got {plugin_dir!r})")
        out["plugin_dir"] = check_absolute(plugin_dir.rstrip("/") or "/", "plugin-directory")
    return out
