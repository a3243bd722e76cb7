#!/usr/bin/env bash
# The base image `make image` uses where no registry is reachable: Debian
# bookworm minbase with python3 and its venv module, made by debootstrap from
# Debian's package archive and packed as a single OCI layer. The Containerfile
# is the same as with the public python:3.11-slim-bookworm; only BASE_IMAGE differs.
#
# Cached as an OCI archive keyed by a hash of the recipe, the suite, the
# packages, the mirror and what is trimmed, so it is made once per machine and pin.
#
#   debian-base.sh BUILDAH_GLOBAL_ARGS...   ensure the base is in that storage, print its name
set -euo pipefail

suite="${GEDGE_BASE_SUITE:-bookworm}"
mirror="${GEDGE_BASE_MIRROR:-http://deb.debian.org/debian}"
packages="python3,python3-venv"
cache_root="${GEDGE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gedge-accel/image}"

for tool in debootstrap buildah; do
  if ! command -v "$tool" >/dev/null; then
    echo "make image: '$tool' is missing: install Debian's package $tool (apt-get install $tool)," \
      "or pass BASE_IMAGE=python:3.11-slim-bookworm where a registry is reachable" >&2
    exit 2
  fi
done

# What a container never needs: package caches and lists, docs, man pages,
# locales, glibc's iconv modules (Python's codecs are its own).
trim=(var/cache/apt var/lib/apt/lists usr/share/doc usr/share/man usr/share/info usr/share/locale
  var/log usr/lib/x86_64-linux-gnu/gconv usr/lib/aarch64-linux-gnu/gconv)
recipe=2 # bump when the steps below change what the base holds

key="$(echo "$recipe $suite $mirror $packages ${trim[*]}" | sha256sum | cut -c1-16)"
name="localhost/gedge-debian-base:$key"
archive="$cache_root/debian-base-$key.tar"

if buildah "$@" inspect --type image "$name" >/dev/null 2>&1; then
  echo "$name"
  exit 0
fi

mkdir -p "$cache_root"
exec 8>"$cache_root/.base.lock"
flock 8

if [ ! -s "$archive" ]; then
  work="$(mktemp -d "$cache_root/.base.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "make image: debootstrap $suite (minbase + $packages) from $mirror" >&2
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    echo "make image: stage base: debootstrap $suite from $mirror failed (log above)" >&2
    exit 1
  fi
  for path in "${trim[@]}"; do
    rm -rf "${work:?}/rootfs/$path"
  done
  rm -rf "$work/rootfs/tmp/"*
  mkdir -p "$work/rootfs/var/cache/apt/archives/partial" "$work/rootfs/var/lib/apt/lists/partial" \
    "$work/rootfs/var/log"
  find "$work/rootfs" -depth -name __pycache__ -type d -exec rm -rf {} +
  # One layer, files in a fixed order with fixed owners and times.
  tar --sort=name --numeric-owner --mtime=@0 --xattrs -C "$work/rootfs" -cf "$work/rootfs.tar" .
  ctr="$(buildah "$@" from scratch)"
  buildah "$@" add "$ctr" "$work/rootfs.tar" / >/dev/null
  buildah "$@" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/sh "$ctr"
  buildah "$@" commit --quiet --timestamp 0 --rm "$ctr" "$name" >/dev/null
  buildah "$@" push --quiet "$name" "oci-archive:$archive.part:$name" >/dev/null
  mv "$archive.part" "$archive"
  # Bases of earlier pins are not used again.
  find "$cache_root" -maxdepth 1 -name 'debian-base-*.tar' ! -name "debian-base-$key.tar" -delete
  for stale in $(buildah "$@" images --format '{{.Name}}:{{.Tag}}' | grep '/gedge-debian-base:' || true); do
    [ "$stale" = "$name" ] || buildah "$@" rmi "$stale" >/dev/null 2>&1 || true
  done
  echo "$name"
  exit 0
fi

buildah "$@" pull --quiet "oci-archive:$archive" >/dev/null
buildah "$@" inspect --type image "$name" >/dev/null
echo "$name"
