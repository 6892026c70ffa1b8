#!/usr/bin/env bash
# Build the test control plane's binaries from the Go module proxy, once per version, outside the clone:
#   $ATLASLAB_K8S_CACHE/k8s-$K8S_VERSION/bin/{kube-apiserver,kube-controller-manager,kube-scheduler}
#   $ATLASLAB_K8S_CACHE/kwok-$KWOK_VERSION/bin/kwok
# (ATLASLAB_K8S_CACHE defaults to /var/cache/atlaslab-k8s). A binary already there is kept, so a second run
# costs nothing; Go's own module and build caches (~/go, ~/.cache/go-build) make a rebuild after a version bump
# cheaper. Cold on 2 cores: see docs/kubernetes.md. Prints a line every 30 s while a build runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$here/versions.sh"
cache="${ATLASLAB_K8S_CACHE:-/var/cache/atlaslab-k8s}"
k8s_bin="$cache/k8s-$K8S_VERSION/bin"
kwok_bin="$cache/kwok-$KWOK_VERSION/bin"
# etcd: the server release Kubernetes $K8S_VERSION itself requires (go.etcd.io/etcd/server/v3), built in the same
# scratch module. Debian's etcd-server (3.4.23 on bookworm) cannot answer watch progress requests, so the API server
# refuses the streaming lists that KWOK's client asks for and KWOK's informers go stale (docs/kubernetes.md).
components=(kube-apiserver kube-controller-manager kube-scheduler etcd)

missing=()
for c in "${components[@]}"; do [ -x "$k8s_bin/$c" ] || missing+=("$c"); done
[ -x "$kwok_bin/kwok" ] || missing+=(kwok)
if [ ${#missing[@]} = 0 ]; then
  echo "control plane binaries cached: $k8s_bin, $kwok_bin"
  exit 0
fi
command -v go >/dev/null || { echo "go is needed to build ${missing[*]} (Kubernetes $K8S_VERSION, KWOK $KWOK_VERSION)" >&2; exit 1; }

mkdir -p "$cache" "$k8s_bin" "$kwok_bin"
# One build at a time per machine (several clones may share the cache).
exec 9>"$cache/.build.lock"
flock 9

export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

# Runs "$@" and prints a line every 30 s, so a long build is seen to be alive.
with_progress() {
  local label=$1; shift
  local t0; t0=$(date +%s)
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && echo "  ... $label: $(($(date +%s) - t0)) s"
  done
  wait "$pid" || { echo "$label failed" >&2; return 1; }
  echo "  $label: done in $(($(date +%s) - t0)) s"
}

# A scratch module that requires k8s.io/kubernetes at the pinned release. k8s.io/kubernetes' own go.mod points
# each k8s.io/* staging module at ./staging/src/...; here each one is pinned to the matching v0.MINOR.PATCH.
build_kubernetes() {
  local src="$cache/src-k8s-$K8S_VERSION" minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  mkdir -p "$src"
  if [ ! -f "$src/go.sum.done" ]; then
    echo "==> resolving k8s.io/kubernetes $K8S_VERSION in $src"
    local upstream
    upstream=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    python3 - "$upstream" "$K8S_VERSION" > "$src/go.mod" <<'PY'
import re
import sys

upstream, version = open(sys.argv[1]).read(), sys.argv[2]
staging = "v0." + version.removeprefix("v1.")
go = re.search(r"^go (\S+)", upstream, re.M).group(1)
modules = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", upstream, re.M)))
print(f"module atlaslab.test/k8sbuild\n\ngo {go}\n\nrequire k8s.io/kubernetes {version}\n\nreplace (")
for m in modules:
    print(f"\t{m} => {m} {staging}")
print(")")
PY
    cat > "$src/tools.go" <<'GO'
//go:build tools

// Package tools names the commands this scratch module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
    mkdir -p "$src/cmd/etcd"
    cat > "$src/cmd/etcd/main.go" <<'GO'
// Command etcd is etcd's own server main, at the release Kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    with_progress "go mod tidy (downloads modules)" bash -c "cd '$src' && go mod tidy"
    touch "$src/go.sum.done"
  fi
  # Version stamps: helm compares a chart's kubeVersion with what the server reports.
  local pkg=k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for c in "${components[@]}"; do
    [ -x "$k8s_bin/$c" ] && continue
    echo "==> building $c for Kubernetes $K8S_VERSION ($(elapsed) s so far)"
    local pkg_path="k8s.io/kubernetes/cmd/$c"
    [ "$c" = etcd ] && pkg_path=./cmd/etcd
    with_progress "$c" bash -c "cd '$src' && go build -trimpath -ldflags '$ld' -o '$k8s_bin/.$c.tmp' $pkg_path"
    mv "$k8s_bin/.$c.tmp" "$k8s_bin/$c"
  done
}

build_kwok() {
  [ -x "$kwok_bin/kwok" ] && return 0
  echo "==> building kwok $KWOK_VERSION ($(elapsed) s so far)"
  local tmp="$cache/.kwok-gobin"
  rm -rf "$tmp"
  with_progress kwok env GOBIN="$tmp" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$tmp/kwok" "$kwok_bin/kwok"
  rm -rf "$tmp"
}

echo "==> building the test control plane: Kubernetes $K8S_VERSION, KWOK $KWOK_VERSION (missing: ${missing[*]})"
build_kubernetes
build_kwok
echo "==> control plane binaries ready in $(elapsed) s: $k8s_bin, $kwok_bin"
