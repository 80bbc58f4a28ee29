#!/usr/bin/env bash
# WebSocket fan-out, wsbridge against Centrifugo, one load generator for both.
#
#   bash bench/fanout.sh [--clients 1000,10000] [--seconds 10] [--rate-deliveries 20000]
#                        [--flat-deliveries 2000000] [--out FILE]
#
# Builds what it needs (release, cached under the cargo target dir,
# CARGO_TARGET_DIR respected): the fanout load generator (bench/fanout),
# wsbridge (statically linked, as bench/run.sh measures it) and Centrifugo
# from the Go module proxy at the version pinned in bench/centrifugo/go.mod.
# Then, for each N, each server in turn: N WebSocket subscribers on one
# channel, a fixed publish rate, then flat out. Results: printed and written
# to bench/results/fanout.md (default). Figures only: nothing is asserted.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
target="$CARGO_TARGET_DIR"
log() { echo "[fanout] $*" >&2; }

out="$here/results/fanout.md"
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --clients|--seconds|--rate-deliveries|--flat-deliveries) args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# 10,000 subscribers: as many sockets in the load generator and the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files: $(ulimit -n)"

log "building the load generator (release)"
cargo build --release --quiet --manifest-path "$here/fanout/Cargo.toml" || { log "fanout build failed"; exit 1; }

log "building wsbridge (release, static)"
host="$(rustc -vV | sed -n 's/^host: //p')"
wsbridge="$target/$host/release/wsbridge"
(cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --quiet --bin wsbridge --target "$host") || { log "wsbridge build failed"; exit 1; }

log "building Centrifugo (cached)"
centrifugo="$(bash "$here/centrifugo/build.sh")" || { log "Centrifugo build failed"; exit 1; }

work="$target/bench/fanout-$$"
mkdir -p "$work"
log "running; logs and configs under $work"
"$target/release/fanout" --wsbridge "$wsbridge" --centrifugo "$centrifugo" --work "$work" --out "$out" "${args[@]}"
