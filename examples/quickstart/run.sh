#!/usr/bin/env bash
# The wsbridge quickstart: a demo WebSocket feed, a demo HTTP subscriber and
# `wsbridge standalone` with wsbridge.yaml, all on this machine (no cluster,
# no network). Publishes one message after a few seconds, so that messages
# flow both ways: feed -> wsbridge -> subscribers, and
# publisher -> wsbridge -> feed (which echoes it back) and subscribers.
#
# usage: examples/quickstart/run.sh [--duration SECONDS] [--release] [--backend rabbitmq]
#   --duration SECONDS  stop by itself after SECONDS (default: run until Ctrl-C)
#   --release           build with --release
#   --backend rabbitmq  the same YAML with backend: rabbitmq on the Channel,
#                       through the broker named in the environment
# environment:
#   WSBRIDGE_BIN     use this wsbridge binary instead of building one
#   WSBRIDGE_LISTEN  wsbridge's listener (default 127.0.0.1:8080)
#   WSBRIDGE_RABBITMQ_URL or WSBRIDGE_RABBITMQ_URL_FILE  the broker (--backend rabbitmq)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
duration=""
profile="debug"
backend="memory"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="${2:?--duration needs a number of seconds}"; shift 2 ;;
    --release) profile="release"; shift ;;
    --backend) backend="${2:?--backend needs memory or rabbitmq}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -n "${WSBRIDGE_BIN:-}" ]; then
  WSBRIDGE_BIN="$(cd "$(dirname "$WSBRIDGE_BIN")" && pwd)/$(basename "$WSBRIDGE_BIN")"
fi
cd "$repo"
config=examples/quickstart/wsbridge.yaml
tmp=""
case "$backend" in
  memory) ;;
  rabbitmq)
    if [ -z "${WSBRIDGE_RABBITMQ_URL:-}${WSBRIDGE_RABBITMQ_URL_FILE:-}" ]; then
      echo "--backend rabbitmq needs WSBRIDGE_RABBITMQ_URL or WSBRIDGE_RABBITMQ_URL_FILE (amqp://user:password@host:5672/%2f)" >&2
      exit 2
    fi
    # The quickstart's YAML unchanged but for the Channel's backend.
    tmp="$(mktemp -d)"
    config="$tmp/wsbridge.yaml"
    awk '{ print } /^kind: Channel$/ { channel = 1 } channel && /^spec:$/ { print "  backend: rabbitmq"; channel = 0 }' \
      examples/quickstart/wsbridge.yaml > "$config"
    ;;
  *) echo "unknown backend: $backend (memory or rabbitmq)" >&2; exit 2 ;;
esac
listen="${WSBRIDGE_LISTEN:-127.0.0.1:8080}"
export WSBRIDGE_LISTEN="$listen"

if [ -n "${WSBRIDGE_BIN:-}" ]; then
  bin="$WSBRIDGE_BIN"
else
  echo "==> building wsbridge ($profile; the first build takes a few minutes)"
  flags=()
  [ "$profile" = release ] && flags+=(--release)
  cargo build --quiet --bin wsbridge "${flags[@]}"
  target="${CARGO_TARGET_DIR:-$repo/target}"
  case "$target" in /*) ;; *) target="$repo/$target" ;; esac
  bin="$target/$profile/wsbridge"
fi

pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo "==> stopping"
    # In reverse order of starting, each one gone before the next: wsbridge
    # first, so it closes its feed connection and drains its deliveries
    # while the demo peers are still there to take them.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill -TERM "${pids[i]}" 2>/dev/null || true
      wait "${pids[i]}" 2>/dev/null || true
    done
  fi
  [ -n "$tmp" ] && rm -rf "$tmp"
  echo "==> done"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "==> starting the demo feed (ws://127.0.0.1:9001/feed) and the demo subscriber (http://127.0.0.1:9002/)"
"$bin" demo-feed --listen 127.0.0.1:9001 &
pids+=($!)
"$bin" demo-subscriber --listen 127.0.0.1:9002 --expect-token demo-token &
pids+=($!)
echo "==> starting: wsbridge standalone -f $config (backend $backend, listening on $listen)"
NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" "$bin" standalone -f "$config" \
  > >(sed -u 's/^/[wsbridge]   /') 2>&1 &
pids+=($!)

start=$SECONDS
body='{"order":"buy","symbol":"DEMO","qty":1}'
url="http://$listen/channels/default/demo"
publish() {
  if command -v curl >/dev/null; then
    curl -sS -X POST -H 'Content-Type: application/json' --data "$body" -w ' (HTTP %{http_code})' "$url"
  else
    # No curl: plain HTTP over bash's /dev/tcp.
    exec 3<>"/dev/tcp/${listen%:*}/${listen##*:}"
    printf 'POST /channels/default/demo HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
      "$listen" "${#body}" "$body" >&3
    tr -d '\r' <&3 | awk 'NR==1{status=$2} body{print $0 " (HTTP " status ")"} /^$/{body=1}'
    exec 3<&-
  fi
}

sleep 3
echo "==> publishing a message: curl -X POST --data '$body' $url"
for _ in $(seq 1 20); do
  # 503 until the bridge is connected: try again shortly.
  if out="$(publish 2>&1)" && [[ "$out" == *"(HTTP 202)"* ]]; then break; fi
  sleep 0.5
done
echo "==> publish answered: ${out:-nothing}"

if [ -n "$duration" ]; then
  remaining=$((duration - (SECONDS - start)))
  [ "$remaining" -gt 0 ] && sleep "$remaining"
else
  echo "==> messages are flowing; press Ctrl-C to stop"
  wait
fi
