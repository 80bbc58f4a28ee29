#!/usr/bin/env bash
# Builds the test control plane from published Go modules and caches it under
# target/controlplane/bin. A stamp of go.mod/go.sum/sources makes reruns free.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${WSBRIDGE_CONTROLPLANE_BIN:-${CARGO_TARGET_DIR:-$root/target}/controlplane/bin}
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here"/etcd/*.go "$0" | sha256sum | cut -c1-16)
bins=(etcd kube-apiserver kube-controller-manager kubectl)

if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
  echo "control plane: cached in $out"
  exit 0
fi
mkdir -p "$out"
cd "$here"
start=$(date +%s)
echo "control plane: building ${bins[*]} (first time takes several minutes)"
export CGO_ENABLED=0
go build -trimpath -ldflags="-s -w" -o "$out/etcd" ./etcd
# Stamp the release into the binaries: helm's kubeVersion check and
# `kubectl version` read it (an unstamped build reports v0.0.0-master).
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' go.mod)
minor=$(echo "$kube_version" | cut -d. -f2)
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
go build -trimpath -ldflags="-s -w $version_flags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
echo "$stamp" > "$out/.stamp"
echo "control plane: built in $(( $(date +%s) - start ))s into $out"
