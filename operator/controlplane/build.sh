#!/usr/bin/env bash
# Build the control-plane binary (etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# from the official Go modules) into bin/controlplane.
#
# The binary is cached by the hash of go.mod, go.sum and main.go under
# ${MODELOPS_CACHE:-$HOME/.cache/modelops}/controlplane/<hash>/, so a second build, or a fresh
# clone on the same machine, costs nothing. GOTOOLCHAIN=local: the installed Go must be 1.26+.
# -mod=readonly: go.sum is committed and never changed by a build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

command -v go >/dev/null || { echo "build.sh: Go 1.26+ is required (https://go.dev/dl/)" >&2; exit 1; }
have="$(go env GOVERSION)"
case "$have" in
  go1.2[6-9]* | go1.[3-9][0-9]*) ;;
  *) echo "build.sh: Go 1.26+ is required, found $have" >&2; exit 1 ;;
esac

k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")"
hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)"
cache="${MODELOPS_CACHE:-$HOME/.cache/modelops}/controlplane/$hash"
mkdir -p "$root/bin"
if [[ -x "$cache/controlplane" ]]; then
  ln -sfn "$cache/controlplane" "$root/bin/controlplane"
  echo "control plane $k8s_version: cached build $cache/controlplane"
  exit 0
fi

echo "building the control plane $k8s_version with $have (cold: about 7 minutes on 2 cores) ..."
start=$(date +%s)
(cd "$here" && go mod download) || {
  echo "build.sh: go mod download failed (is the Go module proxy reachable? go env GOPROXY)" >&2
  exit 1
}
echo "  modules downloaded in $(($(date +%s) - start)) s"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for kv in "gitVersion=$k8s_version" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
  "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
  ldflags+=" -X k8s.io/component-base/version.$kv"
done
mkdir -p "$cache"
# -v names each package as it is compiled: a count every 100 shows progress.
set +e
(cd "$here" && go build -v -trimpath -ldflags "$ldflags" -o "$cache/controlplane.tmp" .) 2>&1 |
  awk '/^go: |^# |\.go:[0-9]+:/ {print; next} {n++; if (n % 100 == 0) {printf "  %d packages compiled\n", n; fflush()}}'
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 || ! -x "$cache/controlplane.tmp" ]]; then
  echo "build.sh: go build failed" >&2
  exit 1
fi
mv "$cache/controlplane.tmp" "$cache/controlplane"
ln -sfn "$cache/controlplane" "$root/bin/controlplane"
echo "control plane $k8s_version built in $(($(date +%s) - start)) s: $cache/controlplane ($(du -h "$cache/controlplane" | cut -f1))"
