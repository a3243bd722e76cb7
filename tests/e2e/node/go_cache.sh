# Sourced by build_containerd.sh and build_tools.sh: one cache for Go-built e2e
# binaries, outside the repository, keyed by a hash of the inputs the script names
# (pins, sources), the script, this file and the Go toolchain.
#
# The sourcing script sets `name` (for messages), `cache_root`, `binaries` (the
# files a complete build holds) and `inputs` (files hashed into the key), then:
#   go_cache_start "$@"     --print-dir: print the directory and exit; a complete
#                           build: print it and exit; else take the build lock and
#                           set go_bin, out, staging, started
#   go_cache_finish SUMMARY move the staged build into place and print its directory

go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

go_cache_complete() {
  [ -f "$out/.complete" ] || return 1
  local binary
  for binary in "${binaries[@]}"; do [ -x "$out/$binary" ] || return 1; done
}

go_cache_start() {
  if [ ! -x "$go_bin" ]; then
    echo "$name: no Go toolchain (set GO= or put go on PATH)" >&2
    exit 2
  fi
  local pin_hash
  pin_hash="$(
    {
      cat "${inputs[@]}" "$0" "${BASH_SOURCE[0]}"
      "$go_bin" version
    } | sha256sum | cut -c1-16
  )"
  out="$cache_root/$pin_hash"
  if [ "${1:-}" = "--print-dir" ]; then
    echo "$out"
    exit 0
  fi
  if go_cache_complete; then
    echo "$out"
    exit 0
  fi
  mkdir -p "$cache_root"
  # One lock per pin set: builds of other pins (another checkout) do not wait on this one.
  exec 9>"$cache_root/.build-$pin_hash.lock"
  flock 9
  if go_cache_complete; then
    echo "$out"
    exit 0
  fi
  export GOFLAGS=-mod=mod
  export CGO_ENABLED=0
  staging="$(mktemp -d "$cache_root/.build.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  started=$(date +%s)
}

go_cache_finish() {
  echo "$1 $("$go_bin" version) $(($(date +%s) - started))s" >"$staging/.complete"
  chmod 755 "$staging"
  rm -rf "$out"
  mv "$staging" "$out"
  trap - EXIT
  echo "$name: built in $(($(date +%s) - started))s" >&2
  echo "$out"
}
