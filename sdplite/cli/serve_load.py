"""Where ``sdplite serve``'s configuration comes from: a file, --resource or --device flags.

A file is JSON, or YAML when it is named ``*.yaml``/``*.yml`` (YAML needs
the ``sdplite[yaml]`` extra). Its top-level fields say its format:
``resources`` is sdplite's own (``serve_config``), ``devices`` (or ``device``)
is squat/generic-device-plugin's (``serve_gdp``). Command-line flags
(--plugin-dir, --interval, --domain) win over the file, on every reload too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from .serve_config import ConfigError, ServeConfig, parse_config
from .serve_gdp import parse_devices, parse_file_fields

__all__ = ["load_config", "parse_any", "config_from_args", "read_yaml"]

YAML_SUFFIXES = (".yaml", ".yml")


def read_yaml(text: str, where: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"{where} is YAML, which needs PyYAML: pip install 'sdplite[yaml]' (or write the file as JSON)"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None


def parse_any(raw: Any, domain: Optional[str] = None) -> ServeConfig:
    """Either format, told apart by its top-level fields."""
    keys = {str(k).lower() for k in raw} if isinstance(raw, Mapping) else set()
    if "resources" in keys and keys & {"devices", "device"}:
        raise ConfigError(
            'give "resources" (sdplite\'s format) or "devices" (generic-device-plugin\'s), '
            "not both in one file"
        )
    if "resources" in keys:
        if domain is not None:
            raise ConfigError(
                "--domain is for generic-device-plugin configs (devices:); resources: names are whole"
            )
        return parse_config(raw)
    if keys & {"devices", "device"}:
        return ServeConfig(**parse_file_fields(raw, domain))
    raise ConfigError(
        'the configuration needs "resources" (sdplite\'s format, see sdplite serve --help) '
        'or "devices" (generic-device-plugin\'s format)'
    )


def load_config(path: str, domain: Optional[str] = None) -> ServeConfig:
    """Read and check one configuration file; :class:`ConfigError` says what to fix."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}") from None
    if path.endswith(YAML_SUFFIXES):
        raw = read_yaml(text, path)
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid JSON: {exc} (a YAML file must be named *.yaml or *.yml)"
            ) from None
    return parse_any(raw, domain)


def _device_flags(values: list[str], domain: Optional[str]) -> ServeConfig:
    """--device values: JSON, or YAML as generic-device-plugin's flag also takes."""
    raw = []
    for i, value in enumerate(values):
        try:
            raw.append(json.loads(value))
        except json.JSONDecodeError:
            raw.append(read_yaml(value, f"--device #{i + 1}"))
    return ServeConfig(parse_devices(raw, domain, where="--device"))


def _resource_flags(args: argparse.Namespace) -> ServeConfig:
    resources = []
    for flag in args.resource:
        name, sep, globs = flag.partition("=")
        if not sep or not globs:
            raise ConfigError(
                f"--resource {flag!r}: write NAME=GLOB[,GLOB...], e.g. example.com/serial=/dev/ttyUSB*"
            )
        resources.append(
            {
                "name": name,
                "paths": globs.split(","),
                "count": args.count,
                "mount": args.mount,
                "permissions": args.permissions,
                "container_path": args.container_path or "",
            }
        )
    return parse_config({"resources": resources})


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The configuration the flags describe (re-run on every reload)."""
    given = [flag for flag in ("config", "resource", "device") if getattr(args, flag)]
    if len(given) > 1:
        raise ConfigError(f"give one of --config, --resource, --device (got {', --'.join(given)})")
    if args.config:
        config = load_config(args.config, args.domain)
    elif args.device:
        config = _device_flags(args.device, args.domain)
    elif args.resource:
        if args.domain:
            raise ConfigError("--domain is for --device and generic-device-plugin configs")
        config = _resource_flags(args)
    else:
        raise ConfigError("nothing to serve: add --resource example.com/serial=/dev/ttyUSB* or --config FILE")
    overrides: dict[str, Any] = {}
    if args.plugin_dir:
        overrides["plugin_dir"] = os.path.abspath(args.plugin_dir)
    if args.interval:
        overrides["interval"] = args.interval
    if args.metrics_port:
        overrides["metrics_port"] = args.metrics_port
    if args.cdi:
        overrides["cdi"] = True
    return dataclasses.replace(config, **overrides)
