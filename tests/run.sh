#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine that has Go, Rust and Python:
# installs the Python test dependencies, builds the test control plane
# (etcd, kube-apiserver, kube-controller-manager, kubectl; cached after the
# first run) and runs every cargo test target. Extra arguments go to
# `cargo test`, e.g. `bash tests/run.sh -- --nocapture`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== python test dependencies"
python3 -m pip --version >/dev/null 2>&1 || python3 -m ensurepip --upgrade >/dev/null
python3 -m pip install -q websockets aiohttp 2>/dev/null ||
  python3 -m pip install -q --break-system-packages websockets aiohttp

echo "== control plane"
time bash tests/controlplane/build.sh

echo "== cargo test"
cargo test --all-targets "$@"
