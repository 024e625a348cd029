#!/usr/bin/env bash
# The test command: installs what the interop peers need (Debian packages, the
# grpc-go peer, npm packages), makes .venv if needed, installs sdplite with its
# test dependencies, checks the generated code, lints, type-checks, and runs
# the suite on the newest protobuf and again on the oldest we support (4.25).
set -euo pipefail
cd "$(dirname "$0")/.."
# Interop peers (tests/test_interop_go.py, tests/test_interop_js.py): grpc-go
# from Debian's packages, built in GOPATH mode; @grpc/grpc-js from npm.
# Missing tools make those tests fail, never skip.
interop_packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler)
command -v node >/dev/null && command -v npm >/dev/null || interop_packages+=(nodejs npm)
missing=()
for package in "${interop_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash tests/interop/build_go.sh >/dev/null
npm ci --prefix tests/interop/js --no-audit --no-fund --loglevel=error >/dev/null

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dev]'
# The benchmark harness's peers (grpcio, grpclib): tests/test_benchmarks_smoke.py runs it.
.venv/bin/python -m pip install -q -r benchmarks/requirements.txt
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
