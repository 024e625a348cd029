"""``sdplite health``: exit 0 if the plugins of a running process are registered and watched.

For a DaemonSet liveness probe. The plugin process must run with
SDPLITE_STATUS_FILE set (the image's default); this reads that file and fails
if it is stale, or if a plugin is not registered or the kubelet holds no
ListAndWatch stream to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..status_file import HEARTBEAT, check_status

DEFAULT_STATUS_FILE = "/run/sdplite/status.json"


def run(args: argparse.Namespace) -> int:
    healthy, why = check_status(args.status_file, args.max_age)
    print(("ok: " if healthy else "unhealthy: ") + why, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "health",
        help="check a running plugin process (for liveness probes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--status-file",
        default=os.environ.get("SDPLITE_STATUS_FILE", DEFAULT_STATUS_FILE),
        help=f"the plugin's status file (default: $SDPLITE_STATUS_FILE or {DEFAULT_STATUS_FILE})",
    )
    parser.add_argument(
        "--max-age", type=float, default=3 * HEARTBEAT, help="seconds after which the status is stale"
    )
    parser.set_defaults(run=run)
