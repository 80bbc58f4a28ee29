#!/usr/bin/env bash
# Builds the helm CLI used by the deploy tests from its published Go module
# (pinned in go.mod) and caches it under target/tools/bin. A stamp of
# go.mod/go.sum/this script makes reruns free. kubectl comes from
# tests/controlplane/build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${WSBRIDGE_TOOLS_BIN:-${CARGO_TARGET_DIR:-$root/target}/tools/bin}
stamp=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)

if [[ -x "$out/helm" && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
  echo "tools: cached in $out"
  exit 0
fi
mkdir -p "$out"
cd "$here"
start=$(date +%s)
helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
# helm's Makefile derives the default Kubernetes version (Capabilities, lint
# deprecations) from the client-go it is built with: client-go v0.X.Y -> 1.X.
k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
echo "tools: building helm $helm_version (first time takes a few minutes)"
CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out/helm" helm.sh/helm/v3/cmd/helm
echo "$stamp" > "$out/.stamp"
echo "tools: built helm in $(( $(date +%s) - start ))s into $out"
