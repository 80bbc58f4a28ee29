#!/usr/bin/env bash
# wsbridge data-plane benchmark, side by side with baseline relays.
#
#   bash bench/run.sh [--quick] [--relays wsbridge,benthos,node,python] [--repeat K] [--out FILE] [--dynamic]
#
# --quick: smoke-test sizes (seconds per relay; figures not meaningful).
# --repeat K: K interleaved rounds, best figure of each (default 2; 1 with --quick).
# --dynamic: measure a dynamically linked wsbridge instead of the static
# build that the image ships.
#
# Builds what it needs (release): the wsbench harness (source, sink, load
# generator, runner), wsbridge, Benthos v4.60.0 (Go module proxy), the Node
# relay (npm ci) and the Python relay (venv + pip). A relay that cannot be
# built is reported as n/a with the reason; the others still run.
# Results: printed, and written to bench/results/latest.md and its chart
# bench/results/latest.svg (--quick: quick.md and quick.svg). Everything runs
# on 127.0.0.1 and every wait is bounded. Figures only: nothing here asserts
# a timing.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
target="$CARGO_TARGET_DIR"

orig_args="$*"
quick=""
repeat=""
relays="wsbridge,benthos,node,python"
out=""
dynamic=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick="--quick"; shift ;;
    --relays) relays="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dynamic) dynamic=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$out" ]]; then
  if [[ -n "$quick" ]]; then out="$here/results/quick.md"; else out="$here/results/latest.md"; fi
fi
[[ -z "$repeat" ]] && { if [[ -n "$quick" ]]; then repeat=1; else repeat=2; fi; }
has() { [[ ",$relays," == *",$1,"* ]]; }
log() { echo "[bench] $*" >&2; }

# 100 subscribers x 64 in flight is a lot of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building wsbench (release)"
cargo build --release --quiet --manifest-path "$here/wsbench/Cargo.toml" || { log "wsbench build failed"; exit 1; }
wsbench="$target/release/wsbench"

args=(run $quick --relays "$relays" --repeat "$repeat" --out "$out" --work "$target/bench")

if has wsbridge; then
  # Measured as shipped: the image's binary is static (musl). On a glibc
  # host the closest build is glibc with crt-static, for the host target
  # named explicitly so that build scripts and proc-macros stay dynamic.
  # --dynamic measures the default dynamically linked build instead.
  host="$(rustc -vV | sed -n 's/^host: //p')"
  wsbridge_bin="$target/release/wsbridge"
  build=(cargo build --release --quiet --bin wsbridge)
  if [[ -z "$dynamic" && "$host" == *-linux-gnu ]]; then
    log "building wsbridge (release, static)"
    build+=(--target "$host")
    wsbridge_bin="$target/$host/release/wsbridge"
    build=(env RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" "${build[@]}")
    export WSBENCH_WSBRIDGE_BUILD="release, statically linked (glibc crt-static, as the image's static musl binary)"
  else
    log "building wsbridge (release)"
    export WSBENCH_WSBRIDGE_BUILD="release, dynamically linked"
  fi
  if (cd "$root" && "${build[@]}"); then
    if "$wsbridge_bin" standalone --help >/dev/null 2>&1; then
      args+=(--wsbridge "$wsbridge_bin")
    else
      log "wsbridge has no 'standalone' command in this build: reported as n/a"
    fi
  else
    log "wsbridge build failed: reported as n/a"
  fi
fi

if has benthos; then
  log "building Benthos v4.60.0 (cached)"
  if command -v go >/dev/null && benthos="$(bash "$here/benthos/build.sh")"; then
    args+=(--benthos "$benthos")
  else
    log "Benthos build failed: reported as n/a"
  fi
fi

if has node; then
  if command -v node >/dev/null && command -v npm >/dev/null; then
    if [[ ! -d "$here/node/node_modules" || "$here/node/package-lock.json" -nt "$here/node/node_modules" ]]; then
      log "npm ci (node relay)"
      (cd "$here/node" && npm ci --no-audit --no-fund --silent) || log "npm ci failed"
      touch "$here/node/node_modules" 2>/dev/null || true
    fi
    args+=(--node "$(command -v node)" --node-relay "$here/node/relay.js")
  else
    log "node/npm not found: node relay reported as n/a"
  fi
fi

if has python; then
  venv="$target/bench/pyenv"
  stamp="$venv/.requirements"
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/python/requirements.txt" "$stamp"; then
    log "python venv + pip install (python relay)"
    rm -rf "$venv"
    if python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/python/requirements.txt"; then
      cp "$here/python/requirements.txt" "$stamp"
    else
      log "python relay setup failed: reported as n/a"
    fi
  fi
  [[ -f "$stamp" ]] && args+=(--python "$venv/bin/python" --python-relay "$here/python/relay.py")
fi

mkdir -p "$target/bench"
log "running: ${args[*]}"
export WSBENCH_COMMAND="bash bench/run.sh${orig_args:+ $orig_args}"
status=0
"$wsbench" "${args[@]}" || status=$?
# A scenario of its own: one of two subscribers hangs while the source sends
# 1 GiB in 1 MB messages; each relay's peak RSS (--quick: 64 MiB).
hung_mib=1024 hung_out="$here/results/hung-subscriber.md"
[[ -n "$quick" ]] && hung_mib=64 hung_out="$here/results/hung-subscriber-quick.md"
log "hung-subscriber scenario: ${hung_mib} MiB"
"$wsbench" hung "${args[@]:1}" --total-mib "$hung_mib" --out "$hung_out" || status=$?
exit "$status"
