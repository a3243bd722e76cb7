#!/usr/bin/env bash
# `make image`: build the Containerfile without a Docker engine (buildah, vfs
# storage in a private root) and write an OCI image archive.
#
#   image/build.sh                       -> build/gedge-accel-image.tar, gedge-accel:<version>
#   BASE_IMAGE=python:3.11-slim-bookworm image/build.sh   where a registry is reachable
#
# IMAGE_ARCHIVE and CONTAINERFILE override the output and the build file.
# Without BASE_IMAGE the base is made here from Debian packages (debian-base.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${IMAGE_ARCHIVE:-$repo/build/gedge-accel-image.tar}"
containerfile="${CONTAINERFILE:-$repo/Containerfile}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n1)"
tag="gedge-accel:${version:?no version in pyproject.toml}"
cache_root="${GEDGE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/image}"

if ! command -v buildah >/dev/null; then
  echo "make image: no OCI builder: install Debian's package buildah (apt-get install buildah)" >&2
  exit 2
fi

# A private store: nothing of the host's container storage is read or changed.
store=(--root "$cache_root/storage" --runroot "$cache_root/run" --storage-driver vfs)
mkdir -p "$cache_root" "$(dirname "$out")"
exec 9>"$cache_root/.build.lock"
flock 9

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  base="$("$repo/image/debian-base.sh" "${store[@]}")"
fi

# Layer times from the last commit, so the same tree gives the same layers.
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}"
build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version")
if [ -n "${PIP_INDEX_URL:-}" ]; then build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"); fi
secrets=()
if [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ]; then secrets+=(--secret "id=pip_ca,src=$PIP_CERT"); fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "make image: building $tag from $base" >&2
if ! buildah "${store[@]}" bud --isolation chroot --pull-never --layers=false --timestamp "$epoch" \
  "${build_args[@]}" "${secrets[@]}" -f "$containerfile" -t "$tag" "$repo" >"$log" 2>&1; then
  tail -n 25 "$log" >&2
  step="$(grep -E '^\[[0-9]+/[0-9]+\] STEP|^STEP ' "$log" | tail -n1 || true)"
  echo "make image: build failed at ${step:-an unknown step} (stage/step and command above)" >&2
  exit 1
fi
rm -f "$out.part"
buildah "${store[@]}" push --quiet "$tag" "oci-archive:$out.part:$tag" >/dev/null
mv "$out.part" "$out"
# Earlier builds of the tag are now dangling: drop them so the store stays one image big.
buildah "${store[@]}" rmi --prune >/dev/null 2>&1 || true
size="$(buildah "${store[@]}" images --format '{{.Size}}' "$tag" 2>/dev/null | head -n1)"
echo "make image: $tag -> $out (uncompressed ${size:-size unknown})" >&2
