#!/usr/bin/env bash
# Builds the tools the e2e test of deploy/ needs beside the control plane and the
# node: kustomize (pinned in kustomize/go.mod) to render deploy/ with an overlay,
# and kube-proxy (the Kubernetes release pinned in ../controlplane/kube/go.mod,
# built from a copy of that module so its cache key stays as it is) for Services.
# Cached outside the repository keyed by a hash of the pins, this script and the
# Go toolchain, like ../controlplane/build.sh.
#
#   build_tools.sh              build if missing, print the binary directory
#   build_tools.sh --print-dir  print the binary directory only (no build)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
kustomize_module="$here/kustomize"
kube_module="$here/../controlplane/kube"
go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$go_bin" ]; then
  echo "build_tools.sh: no Go toolchain (set GO= or put go on PATH)" >&2
  exit 2
fi
cache_root="${GEDGE_E2E_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/tools}"

pin_hash="$(
  {
    cat "$kustomize_module/go.mod" "$kustomize_module/go.sum" "$kube_module/go.mod" "$kube_module/go.sum" "$0"
    "$go_bin" version
  } | sha256sum | cut -c1-16
)"
out="$cache_root/$pin_hash"
binaries=(kustomize kube-proxy)

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

echo "kustomize $kustomize_version kube-proxy $kube_version $("$go_bin" version) $(($(date +%s) - started))s" \
  >"$staging/.complete"
chmod 755 "$staging"
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "build_tools.sh: built in $(($(date +%s) - started))s" >&2
echo "$out"
