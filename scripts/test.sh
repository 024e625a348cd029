#!/usr/bin/env bash
# The test command: makes .venv if needed, installs sdplite with its test
# dependencies, checks the generated code, lints, type-checks, and runs the
# suite on the newest protobuf and again on the oldest we support (4.25).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dev]'
.venv/bin/python -m pip install -q --upgrade 'protobuf>=7,<8'

.venv/bin/python proto/generate.py --check
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== tests, protobuf $(.venv/bin/python -c 'import google.protobuf as p; print(p.__version__)')"
.venv/bin/python -m pytest -q "$@"

.venv/bin/python -m pip install -q 'protobuf>=4.25,<4.26'
echo "== tests, protobuf $(.venv/bin/python -c 'import google.protobuf as p; print(p.__version__)')"
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m pip install -q --upgrade 'protobuf>=7,<8'
