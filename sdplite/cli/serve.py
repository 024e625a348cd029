"""``sdplite serve``: a device plugin with no code, from path globs.

Each resource lists the files matching its globs (say /dev/ttyUSB*) as
devices; a container that gets one gets that path as a device node (or, with
--mount, as a bind mount). --count N lets N containers share each device. A
device is Healthy while its path exists; the globs are rescanned every
--interval seconds and changes are pushed to the kubelet.

Resources come from --resource NAME=GLOB[,GLOB...] flags or a JSON --config
file (see `sdplite.cli.serve_config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..plugin import build
from ..supervisor import run as run_plugins
from .serve_config import ConfigError, GlobDevices, ServeConfig, load_config, parse_config


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.config and args.resource:
        raise ConfigError("give either --config or --resource flags, not both")
    if args.config:
        config = load_config(args.config)
        if args.plugin_dir or args.interval or args.metrics_port or args.cdi:
            config = ServeConfig(
                config.resources,
                args.plugin_dir or config.plugin_dir,
                args.interval or config.interval,
                args.metrics_port or config.metrics_port,
                args.cdi or config.cdi,
            )
        return config
    if not args.resource:
        raise ConfigError("nothing to serve: add --resource example.com/serial=/dev/ttyUSB* or --config FILE")
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
            }
        )
    raw: dict[str, Any] = {"resources": resources, "interval": args.interval or 5.0, "cdi": args.cdi}
    if args.metrics_port:
        raw["metrics_port"] = args.metrics_port
    if args.plugin_dir:
        raw["plugin_dir"] = os.path.abspath(args.plugin_dir)
    return parse_config(raw)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"sdplite serve: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        plugins = [
            build(
                r.name,
                r.socket_name,
                GlobDevices(r),
                plugin_dir=config.plugin_dir,
                interval=config.interval,
                metrics_port=config.metrics_port,
                cdi=config.cdi,
            )
            for r in config.resources
        ]
    except ValueError as exc:  # e.g. a resource name CDI cannot use as a kind
        print(f"sdplite serve: configuration error: {exc}", file=sys.stderr)
        return 2
    run_plugins(*plugins)
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve devices found by path globs, with no code",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--resource",
        action="append",
        metavar="NAME=GLOB[,GLOB]",
        help="a resource and the paths of its devices (repeatable)",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON configuration instead of --resource flags")
    parser.add_argument(
        "--count", type=int, default=1, help="containers that may share each device (default 1)"
    )
    parser.add_argument("--mount", action="store_true", help="give paths as bind mounts, not device nodes")
    parser.add_argument(
        "--permissions", default="rw", help="device node permissions from r, w, m (default rw)"
    )
    parser.add_argument("--interval", type=float, help="seconds between rescans (default 5)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics and /healthz on this TCP port (default: off)",
    )
    parser.add_argument(
        "--cdi",
        action="store_true",
        help="write CDI specs into $SDPLITE_CDI_DIR or /var/run/cdi and name the devices in Allocate",
    )
    parser.add_argument(
        "--plugin-dir",
        help="device-plugins directory (default: $SDPLITE_PLUGIN_DIR or /var/lib/kubelet/device-plugins)",
    )
    parser.set_defaults(run=run)
