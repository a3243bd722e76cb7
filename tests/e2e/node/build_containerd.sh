#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 at the version pinned in
# containerd/go.mod, statically (CGO_ENABLED=0, no btrfs/devmapper/zfs
# snapshotters), plus `pause`, the pod sandbox process of the e2e node. Cached
# outside the repository keyed by a hash of the pins, this script, the pause
# source and the Go toolchain (go_cache.sh).
#
#   build_containerd.sh              build if missing, print the binary directory
#   build_containerd.sh --print-dir  print the binary directory only (no build)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="$here/containerd"
name=build_containerd.sh
cache_root="${GEDGE_E2E_CONTAINERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/containerd}"
binaries=(containerd ctr containerd-shim-runc-v2 pause)
inputs=("$module/go.mod" "$module/go.sum" "$module/pause/main.go")
# shellcheck source=go_cache.sh
. "$here/go_cache.sh"
go_cache_start "$@"

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

go_cache_finish "containerd $version"
