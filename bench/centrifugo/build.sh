#!/usr/bin/env bash
# Builds Centrifugo (the module root, pinned by go.mod's tool directive) and
# caches the binary under the cargo target dir. Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/centrifugal/centrifugo/v6)"
out="$target/bench/centrifugo-$version"
stamp="$out.sum"
want="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)"
if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$out"; exit 0
fi
mkdir -p "$(dirname "$out")"
( cd "$here" && CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X github.com/centrifugal/centrifugo/v6/internal/build.Version=${version#v}" \
    -o "$out.tmp" github.com/centrifugal/centrifugo/v6 ) >&2
mv "$out.tmp" "$out"
echo "$want" > "$stamp"
echo "$out"
