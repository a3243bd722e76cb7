#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kubelet at the versions pinned in
# kube/go.mod and etcd/go.mod (written by pin.py) and caches them outside the
# repository, keyed by a hash of the pins, this script and the Go toolchain:
# a fresh clone on the same machine reuses them; a new pin builds afresh.
#
#   build.sh              build if missing, print the binary directory
#   build.sh --print-dir  print the binary directory only (no build)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$go_bin" ]; then
  echo "build.sh: no Go toolchain (set GO= or put go on PATH)" >&2
  exit 2
fi
cache_root="${GEDGE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/controlplane}"

pin_hash="$(
  {
    cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" "$0"
    "$go_bin" version
  } | sha256sum | cut -c1-16
)"
out="$cache_root/$pin_hash"
kube_commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
binaries=(etcd "${kube_commands[@]}")

if [ "${1:-}" = "--print-dir" ]; then
  echo "$out"
  exit 0
fi

complete() {
  [ -f "$out/.complete" ] || return 1
  for name in "${binaries[@]}"; do [ -x "$out/$name" ] || return 1; done
}

if complete; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
# One lock per pin set: builds of other pins (another checkout) do not wait on this one.
exec 9>"$cache_root/.build-$pin_hash.lock"
flock 9
if complete; then
  echo "$out"
  exit 0
fi

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
staging="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
started=$(date +%s)

kube_version="$(cd "$here/kube" && "$go_bin" list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$kube_version" | cut -d. -f2)"
version_pkg=k8s.io/component-base/version
kube_ldflags="-s -w -X $version_pkg.gitVersion=$kube_version -X $version_pkg.gitMajor=1"
kube_ldflags="$kube_ldflags -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"

echo "build.sh: ${kube_commands[*]} $kube_version -> $out" >&2
(cd "$here/kube" && "$go_bin" build -trimpath -ldflags="$kube_ldflags" -o "$staging/" \
  "${kube_commands[@]/#/k8s.io/kubernetes/cmd/}")

etcd_version="$(cd "$here/etcd" && "$go_bin" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
echo "build.sh: etcd $etcd_version -> $out" >&2
(cd "$here/etcd" && "$go_bin" build -trimpath -ldflags="-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3)

echo "kubernetes $kube_version etcd $etcd_version $("$go_bin" version) $(($(date +%s) - started))s" \
  >"$staging/.complete"
chmod 755 "$staging"
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "build.sh: built in $(($(date +%s) - started))s" >&2
echo "$out"
