#!/usr/bin/env bash
# The benchmark from a fresh clone in one command: makes .venv if needed,
# installs sdplite and the benchmark's peers (grpcio, grpclib), then runs
# benchmarks/run.py with any arguments given (--quick, --rounds N, --out FILE)
# and prints its table. About 4 minutes on 2 CPUs; see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . -r benchmarks/requirements.txt
exec .venv/bin/python benchmarks/run.py "$@"
