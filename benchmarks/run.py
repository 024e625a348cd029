"""Benchmark one device plugin written three ways (sdplite, grpcio, grpclib) against one kubelet client.

    python benchmarks/run.py            # the full run (about ten minutes on 2 CPUs)
    python benchmarks/run.py --quick    # tiny counts: checks that everything works

Each plugin runs in its own process; this process is the kubelet stand-in
and client for all of them (grpcio, see kubelet.py). Rounds alternate the
order of the implementations so that drift spreads over all three.
Progress goes to stderr, the report to stdout. See README.md for what each
figure means.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")


def missing_requirements() -> list[str]:
    """Modules the benchmark needs that are not importable."""
    return [name for name in ("grpc", "grpclib", "sdplite") if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.1,
        help="restart polling interval of the grpcio and grpclib plugins, s (default 0.1)",
    )
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)

    missing = missing_requirements()
    if missing:
        print(
            f"benchmarks: cannot import {', '.join(missing)}. Install what the benchmarks need with\n"
            f"    {sys.executable} -m pip install -r {os.path.relpath(REQUIREMENTS)}\n"
            f"and sdplite itself (pip install -e .).",
            file=sys.stderr,
        )
        return 2

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no C-core chatter about closed test connections
    import harness  # imports grpcio and sdplite: only once they are known to be there

    text = harness.run(args.quick, args.rounds, args.poll)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
