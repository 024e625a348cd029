#!/usr/bin/env bash
# Build the grpc-go interop peer (tests/interop/go) in GOPATH mode, against
# Debian's grpc-go and protobuf packages, with Go stubs generated from our own
# proto files. Prints the binary's path. Rebuilds only when an input changed:
# the Go sources, the protos, this script or the Go toolchain.
#
#   bash tests/interop/build_go.sh        # -> ~/.cache/sdplite/interop/kubelet-go
#
# Needs: golang-go golang-google-grpc-dev golang-google-protobuf-dev
#        protoc-gen-go protoc-gen-go-grpc protobuf-compiler (Debian 12).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${SDPLITE_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sdplite/interop}
bin=$out/kubelet-go

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "build_go.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done
gocode=/usr/share/gocode
[ -d "$gocode/src/google.golang.org/grpc" ] || { echo "build_go.sh: golang-google-grpc-dev is not installed" >&2; exit 1; }

stamp=$( (go version; protoc --version
          dpkg-query -W golang-google-grpc-dev golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc 2>/dev/null || true
          cat "$0" "$here"/go/*.go "$root"/proto/v1beta1/api.proto "$root"/proto/pluginregistration/api.proto \
              "$root"/proto/dra/*/api.proto "$root"/proto/dra-health/*/api.proto) | sha256sum | cut -c1-32)
if [ -x "$bin" ] && [ "$(cat "$bin.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# GOPATH mode: the stubs become the package sdplite.test/v1beta1 (the proto's go_package).
mkdir -p "$work/gopath/src/sdplite.test/v1beta1"
protoc -I "$root/proto" \
    --go_out="$work/gopath/src" --go_opt=paths=import \
    --go-grpc_out="$work/gopath/src" --go-grpc_opt=paths=import \
    v1beta1/api.proto pluginregistration/api.proto \
    dra/v1/api.proto dra/v1beta1/api.proto dra-health/v1alpha1/api.proto dra-health/v1/api.proto >&2
mkdir -p "$work/gopath/src/sdplite.test/kubelet-go"
cp "$here"/go/*.go "$work/gopath/src/sdplite.test/kubelet-go/"
(
    cd "$work/gopath/src/sdplite.test/kubelet-go"
    GO111MODULE=off GOPATH="$work/gopath:$gocode" GOFLAGS= go build -o "$work/kubelet-go" . >&2
)
mv -f "$work/kubelet-go" "$bin"
echo "$stamp" >"$bin.stamp"
echo "$bin"
