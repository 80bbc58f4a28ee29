#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine that has Go, Rust and Python:
# installs the Python test dependencies, builds the test control plane
# (etcd, kube-apiserver, kube-controller-manager, kubectl) and the test tools
# (helm, promtool, actionlint; all cached after the first run) and runs every
# cargo test target, and the benchmark's own tests. Extra arguments go to
# `cargo test`, e.g. `bash tests/run.sh -- --nocapture`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== python test dependencies"
python3 -m pip --version >/dev/null 2>&1 || python3 -m ensurepip --upgrade >/dev/null
python3 -m pip install -q websockets aiohttp standardwebhooks paho-mqtt pika 2>/dev/null ||
  python3 -m pip install -q --break-system-packages websockets aiohttp standardwebhooks paho-mqtt pika

echo "== chromium, chromedriver and selenium (browser tests)"
bash tests/tools/chromium.sh

echo "== control plane and test tools (helm, promtool, actionlint)"
time bash tests/controlplane/build.sh
time bash tests/tools/build.sh

echo "== RabbitMQ (the broker tests start their own on free ports)"
time bash tests/tools/rabbitmq.sh

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The benchmark is a workspace of its own; its tests check the report's chart.
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target} \
  cargo test --manifest-path bench/wsbench/Cargo.toml 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
