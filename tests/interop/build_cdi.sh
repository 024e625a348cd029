#!/usr/bin/env bash
# Build the CDI checker (tests/interop/cdi) in GOPATH mode against Debian's
# container-device-interface package, the CDI library container runtimes use.
# Prints the binary's path. Rebuilds only when an input changed.
#
#   bash tests/interop/build_cdi.sh       # -> ~/.cache/sdplite/interop/cdi-check
#
# Needs: golang-go golang-github-container-orchestrated-devices-container-device-interface-dev
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${SDPLITE_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sdplite/interop}
bin=$out/cdi-check
package=golang-github-container-orchestrated-devices-container-device-interface-dev

command -v go >/dev/null || { echo "build_cdi.sh: go is not installed (golang-go)" >&2; exit 1; }
gocode=/usr/share/gocode
[ -d "$gocode/src/github.com/container-orchestrated-devices/container-device-interface" ] ||
    { echo "build_cdi.sh: $package is not installed" >&2; exit 1; }

stamp=$( (go version; dpkg-query -W "$package" 2>/dev/null || true; cat "$0" "$here"/cdi/*.go) | sha256sum | cut -c1-32)
if [ -x "$bin" ] && [ "$(cat "$bin.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$out"
work=$(mktemp -d "$out/build-cdi.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gopath/src/sdplite.test/cdi-check"
cp "$here"/cdi/*.go "$work/gopath/src/sdplite.test/cdi-check/"
(
    cd "$work/gopath/src/sdplite.test/cdi-check"
    GO111MODULE=off GOPATH="$work/gopath:$gocode" GOFLAGS= go build -o "$work/cdi-check" . >&2
)
mv -f "$work/cdi-check" "$bin"
echo "$stamp" >"$bin.stamp"
echo "$bin"
