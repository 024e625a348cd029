"""The ``sdplite`` command: demo, kubelet, serve, inspect, health (``sdplite COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from . import demo, health, inspect, kubelet, serve

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdplite",
        description="Kubernetes device plugins in Python, without grpcio: try, serve and inspect them.",
    )
    parser.add_argument("--version", action="version", version=f"sdplite {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, kubelet, serve, inspect, health):
        module.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
