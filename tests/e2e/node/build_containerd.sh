#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 at the version pinned in
# containerd/go.mod, statically (CGO_ENABLED=0, no btrfs/devmapper/zfs
# snapshotters), plus `pause`, the pod sandbox process of the e2e node. Cached
# outside the repository keyed by a hash of the pins, this script, the pause
# source and the Go toolchain, like ../controlplane/build.sh.
#
#   build_containerd.sh              build if missing, print the binary directory
#   build_containerd.sh --print-dir  print the binary directory only (no build)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="$here/containerd"
go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$go_bin" ]; then
  echo "build_containerd.sh: no Go toolchain (set GO= or put go on PATH)" >&2
  exit 2
fi
cache_root="${GEDGE_E2E_CONTAINERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/containerd}"

pin_hash="$(
  {
    cat "$module/go.mod" "$module/go.sum" "$module/pause/main.go" "$0"
    "$go_bin" version
  } | sha256sum | cut -c1-16
)"
out="$cache_root/$pin_hash"
binaries=(containerd ctr containerd-shim-runc-v2 pause)

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

version="$(cd "$module" && "$go_bin" list -m -f '{{.Version}}' github.com/containerd/containerd/v2)"
ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version"
ldflags="$ldflags -X github.com/containerd/containerd/v2/version.Revision=$version"
tags="no_btrfs no_devmapper no_zfs"

echo "build_containerd.sh: containerd $version -> $out" >&2
(cd "$module" && "$go_bin" build -trimpath -tags "$tags" -ldflags="$ldflags" -o "$staging/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
(cd "$module" && "$go_bin" build -trimpath -ldflags="-s -w" -o "$staging/pause" ./pause)

echo "containerd $version $("$go_bin" version) $(($(date +%s) - started))s" >"$staging/.complete"
chmod 755 "$staging"
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "build_containerd.sh: built in $(($(date +%s) - started))s" >&2
echo "$out"
