#!/usr/bin/env bash
# Builds Benthos core (cmd/benthos, pinned in go.mod's tool directive) and
# caches the binary under the cargo target dir. Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/bench/benthos-v4.60.0"
stamp="$out.sum"
want="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)"
if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$out"; exit 0
fi
mkdir -p "$(dirname "$out")"
( cd "$here" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" github.com/redpanda-data/benthos/v4/cmd/benthos ) >&2
mv "$out.tmp" "$out"
echo "$want" > "$stamp"
echo "$out"
