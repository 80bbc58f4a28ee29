#!/usr/bin/env bash
# `rabbitmq` Channels (endpoint → broker → dispatcher → sink) side by side
# with RabbitMQ's own PerfTest for the same shape, on one throwaway broker.
#
#   bash bench/rabbitmq.sh [--quick] [--messages-1 N] [--messages-10 N] [--out FILE] [--wsbridge BIN]
#                          [--standalone-dispatchers]
#
# Builds what it needs (release, cached under the cargo target dir,
# CARGO_TARGET_DIR respected): the wsbench harness, wsbridge (statically
# linked, as bench/run.sh measures it), and PerfTest from Maven Central
# (bench/tools/perftest.sh, cached under <target>/bench/perftest). Starts
# Debian's rabbitmq-server on free loopback ports with its own data dir
# (bench/tools/rabbitmq-server.sh, as the tests do), runs `wsbench
# rabbitmq` (see bench/wsbench/src/rabbitmq.rs for what each side runs),
# and kills the broker and removes its data at the end. The dispatchers are
# the `wsbridge dispatcher` role watching a throwaway API server
# (bench/tools/controlplane.sh: etcd and kube-apiserver built by
# tests/controlplane/build.sh, cached); with --standalone-dispatchers, or
# when that fails, `wsbridge standalone` processes running the same
# consumer (the report says which). Results: printed
# and written to bench/results/rabbitmq.md (--quick: rabbitmq-quick.md, not
# committed). --wsbridge BIN measures that binary instead of building one.
# Figures only: nothing is asserted.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
target="$CARGO_TARGET_DIR"
log() { echo "[rabbitmq-bench] $*" >&2; }

orig_args="$*"
quick=""
out=""
wsbridge=""
standalone=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick="--quick"; shift ;;
    --out) out="$2"; shift 2 ;;
    --wsbridge) wsbridge="$2"; shift 2 ;;
    --standalone-dispatchers) standalone=1; shift ;;
    --messages-1|--messages-10) args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$out" ]]; then
  if [[ -n "$quick" ]]; then out="$here/results/rabbitmq-quick.md"; else out="$here/results/rabbitmq.md"; fi
fi

log "building wsbench (release)"
cargo build --release --quiet --manifest-path "$here/wsbench/Cargo.toml" || { log "wsbench build failed"; exit 1; }

if [[ -z "$wsbridge" ]]; then
  log "building wsbridge (release, static)"
  host="$(rustc -vV | sed -n 's/^host: //p')"
  wsbridge="$target/$host/release/wsbridge"
  (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --bin wsbridge --target "$host") || { log "wsbridge build failed"; exit 1; }
fi

log "PerfTest (Maven Central, cached)"
perftest_cp="$(bash "$here/tools/perftest.sh")" || { log "PerfTest install failed: reported as n/a"; perftest_cp=""; }

# A copy of its own: a rebuild during the run does not change what is measured.
mkdir -p "$target/bench"
cp "$wsbridge" "$target/bench/wsbridge-rabbitmq-$$" || { log "no wsbridge binary at $wsbridge"; exit 1; }
wsbridge="$target/bench/wsbridge-rabbitmq-$$"
broker="$target/bench/rabbitmq-$$"
cluster="$target/bench/controlplane-$$"
stop_broker() {
  rm -f "$wsbridge"
  for f in "$broker/pgid" "$broker/epmd.pgid" "$cluster/pgid"; do
    [[ -f $f ]] && kill -KILL -- "-$(cat "$f")" 2>/dev/null
  done
  sleep 1
  rm -rf "$broker" "$cluster"
}
trap stop_broker EXIT
log "starting RabbitMQ (data under $broker)"
bash "$here/tools/rabbitmq-server.sh" "$broker" || { log "RabbitMQ did not start"; exit 1; }

cluster_args=()
if [[ -z "$standalone" ]]; then
  log "starting an API server for the dispatchers (data under $cluster)"
  if bash "$here/tools/controlplane.sh" "$cluster"; then
    cluster_args=(--kubeconfig "$cluster/kubeconfig" --kubectl "$target/controlplane/bin/kubectl")
  else
    log "no API server: the dispatchers run as wsbridge standalone processes"
  fi
fi

export WSBENCH_RABBITMQ_VERSION="$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')"
export WSBENCH_JAVA_VERSION="$(java -version 2>&1 | sed -n '1s/.*version "\([^"]*\)".*/\1/p')"
export WSBENCH_WSBRIDGE_BUILD="${WSBENCH_WSBRIDGE_BUILD:-release, statically linked (glibc crt-static, as bench/run.sh measures it), commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?')}"
export WSBENCH_COMMAND="bash bench/rabbitmq.sh${orig_args:+ $orig_args}"
"$target/release/wsbench" rabbitmq $quick --wsbridge "$wsbridge" --amqp-url-file "$broker/url" \
  --broker-pgid "$(cat "$broker/pgid")" --perftest-cp "$perftest_cp" --work "$target/bench" --out "$out" "${cluster_args[@]}" "${args[@]}"
