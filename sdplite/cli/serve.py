"""``sdplite serve``: a device plugin with no code, from path globs, groups or USB IDs.

Each resource lists the files matching its globs (say /dev/ttyUSB*) as
devices; a container that gets one gets that path as a device node (or, with
--mount, as a bind mount, read-only unless --permissions has w). --count N
lets N containers share each device; --container-path puts it elsewhere in
the container (ending in /: a directory, the file keeps its name). A device
is Healthy while its path exists; the globs are rescanned every --interval
seconds and changes are pushed to the kubelet.

Resources come from --resource NAME=GLOB[,GLOB...] flags, or from a --config
FILE in sdplite's format ("resources": [...]) or in squat/generic-device-
plugin's ("devices": [...], also as --device flags): groups of paths mounted
together, USB devices by vendor/product/serial, optional paths, mountPath
directories. The file is JSON, or YAML if named *.yaml (pip install
'sdplite[yaml]'). It is reloaded when it changes and on SIGHUP: unchanged
resources keep serving; a bad new file is refused and the old one stays.
docs/serve.md describes both formats.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .serve_config import ConfigError
from .serve_gdp import LOG_LEVELS
from .serve_load import config_from_args
from .serve_reload import checked, serve_forever


def run(args: argparse.Namespace) -> int:
    try:
        config = checked(config_from_args(args), args.host_root)
    except ConfigError as exc:
        print(f"sdplite serve: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    level = LOG_LEVELS[args.log_level] if args.log_level else config.log_level
    if level is not None:
        logging.getLogger("sdplite").setLevel(level)
    return serve_forever(args, config, lambda: checked(config_from_args(args), args.host_root))


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve devices found by path globs, groups or USB IDs, with no code",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--resource",
        action="append",
        metavar="NAME=GLOB[,GLOB]",
        help="a resource and the paths of its devices (repeatable)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="JSON or YAML configuration, sdplite's or generic-device-plugin's"
    )
    parser.add_argument(
        "--device",
        action="append",
        metavar="JSON",
        help="a resource in generic-device-plugin's format, as its --device flag (repeatable)",
    )
    parser.add_argument(
        "--domain",
        help="the resource name prefix for --device and generic-device-plugin configs (default squat.ai)",
    )
    parser.add_argument(
        "--count", type=int, default=1, help="containers that may share each device (default 1)"
    )
    parser.add_argument("--mount", action="store_true", help="give paths as bind mounts, not device nodes")
    parser.add_argument(
        "--permissions",
        default="rw",
        help="device node permissions from r, w, m (default rw); with --mount, no w means read-only",
    )
    parser.add_argument(
        "--container-path", help="where the container sees the device (ending in /: a directory)"
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
    parser.add_argument(
        "--log-level",
        choices=list(LOG_LEVELS),
        help="as generic-device-plugin's: all, debug, info, warn, error, none (default info)",
    )
    parser.add_argument(
        "--host-root",
        default="/",
        help="where the host's / is seen: globs, sysfs and /dev are looked up under it (default /)",
    )
    parser.set_defaults(run=run)
