#!/usr/bin/env bash
# Builds cargo-deny at a pinned version with its own lock file
# (`cargo install --locked`) into target/tools/cargo-deny, once: a stamp of
# the version makes reruns free. Prints the binary's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=0.20.2
prefix=${CARGO_TARGET_DIR:-$root/target}/tools/cargo-deny
bin=$prefix/bin/cargo-deny
mkdir -p "$prefix"
exec 9>"$prefix/.lock"
flock 9
if [[ -x "$bin" && "$(cat "$prefix/.stamp" 2>/dev/null)" == "$version" ]]; then
  echo "$bin"
  exit 0
fi
start=$(date +%s)
echo "tools: building cargo-deny $version (first time takes several minutes)" >&2
cargo install --quiet --locked --force --root "$prefix" "cargo-deny@$version" >&2
echo "$version" >"$prefix/.stamp"
echo "tools: built cargo-deny in $(($(date +%s) - start))s" >&2
echo "$bin"
