#!/usr/bin/env bash
# Builds the tools the e2e test of deploy/ needs beside the control plane and the
# node: kustomize (pinned in kustomize/go.mod) to render deploy/ with an overlay,
# and kube-proxy (the Kubernetes release pinned in ../controlplane/kube/go.mod,
# built from a copy of that module so its cache key stays as it is) for Services.
# Cached outside the repository keyed by a hash of the pins, this script and the
# Go toolchain (go_cache.sh).
#
#   build_tools.sh              build if missing, print the binary directory
#   build_tools.sh --print-dir  print the binary directory only (no build)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
kustomize_module="$here/kustomize"
kube_module="$here/../controlplane/kube"
name=build_tools.sh
cache_root="${GEDGE_E2E_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/tools}"
binaries=(kustomize kube-proxy)
inputs=("$kustomize_module/go.mod" "$kustomize_module/go.sum" "$kube_module/go.mod" "$kube_module/go.sum")
# shellcheck source=go_cache.sh
. "$here/go_cache.sh"
go_cache_start "$@"

kustomize_version="$(cd "$kustomize_module" && "$go_bin" list -m -f '{{.Version}}' sigs.k8s.io/kustomize/kustomize/v5)"
echo "build_tools.sh: kustomize $kustomize_version -> $out" >&2
(cd "$kustomize_module" && "$go_bin" build -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$kustomize_version" \
  -o "$staging/kustomize" sigs.k8s.io/kustomize/kustomize/v5)

# A copy of the control plane's wrapper module: kube-proxy may add go.sum lines the
# copy keeps to itself. Built after the control plane, most packages come from Go's cache.
mkdir "$staging/kube"
cp "$kube_module/go.mod" "$kube_module/go.sum" "$staging/kube/"
kube_version="$(cd "$staging/kube" && "$go_bin" list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$kube_version" | cut -d. -f2)"
version_pkg=k8s.io/component-base/version
kube_ldflags="-s -w -X $version_pkg.gitVersion=$kube_version -X $version_pkg.gitMajor=1"
kube_ldflags="$kube_ldflags -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
echo "build_tools.sh: kube-proxy $kube_version -> $out" >&2
(cd "$staging/kube" && "$go_bin" build -trimpath -ldflags="$kube_ldflags" -o "$staging/kube-proxy" \
  k8s.io/kubernetes/cmd/kube-proxy)
rm -rf "$staging/kube"

go_cache_finish "kustomize $kustomize_version kube-proxy $kube_version"
