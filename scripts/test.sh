#!/usr/bin/env bash
# The test command: installs what the interop peers need (Debian packages, the
# grpc-go peer, npm packages), makes .venv if needed, installs sdplite with its
# test dependencies, checks the generated code, lints, type-checks, and runs
# the suite on Python 3.11 with the newest protobuf and h2 and again with the
# oldest we support (protobuf 4.25, h2 4.1), then on Python 3.9 and 3.13 with
# the versions pip resolves there, and runs `sdplite demo` on Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
# Interop peers (tests/test_interop_go.py, tests/test_interop_js.py): grpc-go
# from Debian's packages, built in GOPATH mode; @grpc/grpc-js from npm. The CDI
# checker (tests/test_cdi.py): Debian's container-device-interface library, also
# built in GOPATH mode. Missing tools make those tests fail, never skip.
interop_packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler
    golang-github-container-orchestrated-devices-container-device-interface-dev)
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
bash tests/interop/build_cdi.sh >/dev/null
npm ci --prefix tests/interop/js --no-audit --no-fund --loglevel=error >/dev/null

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dev]'
# The benchmark harness's peers (grpcio, grpclib): tests/test_benchmarks_smoke.py runs it.
.venv/bin/python -m pip install -q -r benchmarks/requirements.txt
.venv/bin/python -m pip install -q --upgrade 'protobuf>=7,<8' 'h2>=4.1,<5'

.venv/bin/python proto/generate.py --check
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

versions() {
    "$1" -c 'import sys, h2, google.protobuf as p
print("Python %d.%d.%d, protobuf %s, h2 %s" % (sys.version_info[:3] + (p.__version__, h2.__version__)))'
}

echo "== tests, $(versions .venv/bin/python)"
.venv/bin/python -m pytest -q "$@"

# The low ends of the dependency ranges that setup.cfg allows.
.venv/bin/python -m pip install -q 'protobuf>=4.25,<4.26' 'h2==4.1.*'
echo "== tests, $(versions .venv/bin/python)"
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m pip install -q --upgrade 'protobuf>=7,<8' 'h2>=4.1,<5'

# The oldest and the newest Python that README promises, each with what pip
# resolves there, and the image's Python (Dockerfile) for the demo. They come
# from pyenv; SDPLITE_PYTHONS chooses others (an empty value skips them).
find_python() {
    local wanted=$1 found
    found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$wanted".*/bin/python 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ]; then
        echo "scripts/test.sh: Python $wanted is missing: install it with 'pyenv install $wanted'" \
            "(or set SDPLITE_PYTHONS to the versions you have)" >&2
        exit 1
    fi
    echo "$found"
}

python_venv() {
    local version=$1 dir=.venv-$1 python
    if [ ! -x "$dir/bin/python" ]; then
        python=$(find_python "$version")
        "$python" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install -q --upgrade pip
}

# The two suites run side by side (about 3 minutes saved on 2 cores); each
# writes its own log, printed whole once both are done.
others=(${SDPLITE_PYTHONS-3.9 3.13})
pids=()
for version in "${others[@]}"; do
    python_venv "$version"
    ".venv-$version/bin/python" -m pip install -q -e '.[test]' -r benchmarks/requirements.txt
done
for version in "${others[@]}"; do
    (
        echo "== tests, $(versions ".venv-$version/bin/python")"
        ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider "$@"
    ) >".venv-$version/pytest.log" 2>&1 &
    pids+=($!)
done
failed=0
for index in "${!others[@]}"; do
    wait "${pids[$index]}" || failed=1
    cat ".venv-${others[$index]}/pytest.log"
done
[ "$failed" -eq 0 ]

if [ -n "${SDPLITE_PYTHONS-x}" ]; then
    python_venv 3.12
    .venv-3.12/bin/python -m pip install -q .
    echo "== sdplite demo, $(versions .venv-3.12/bin/python)"
    .venv-3.12/bin/sdplite demo >.venv-3.12/demo.txt
    tail -n 1 .venv-3.12/demo.txt | grep -qx "done." || { cat .venv-3.12/demo.txt; exit 1; }
    echo "demo: $(wc -l <.venv-3.12/demo.txt) lines, ends with done."
fi
