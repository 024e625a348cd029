"""The ``sdplite`` command: demo, kubelet, serve, inspect, health (``sdplite COMMAND --help``)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Optional

from ..version import VERSION
from . import demo, health, inspect, kubelet, serve

__all__ = ["main", "plain"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdplite",
        description="Kubernetes device plugins in Python, without grpcio: try, serve and inspect them.",
    )
    parser.add_argument("--version", action="version", version=f"sdplite {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo, kubelet, serve, inspect, health):
        module.add_parser(commands)
    for sub in commands.choices.values():
        sub.description = plain(sub.description or "")
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.error(f"give a COMMAND: {', '.join(commands.choices)} (sdplite COMMAND --help)")
    if extra:  # reported with the subcommand's usage, not the top level's
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with _sigint_interrupts():
            code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


@contextlib.contextmanager
def _sigint_interrupts() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, even if we were started with it ignored.

    A background job of a non-interactive shell (``sdplite inspect --follow &``
    in a script or a CI job) starts with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: ``kill -INT`` would not stop
    ``inspect --follow``, whose only way to end is Ctrl-C. (``sdplite kubelet``
    and ``sdplite serve`` install their own handlers inside this.) The
    previous handler comes back afterwards; off the main thread, where
    handlers cannot be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def plain(docstring: str) -> str:
    """A module docstring as --help text: without the reST markup the API docs use."""
    return docstring.replace("``", "")


if __name__ == "__main__":
    sys.exit(main())
