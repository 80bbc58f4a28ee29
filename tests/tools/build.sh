#!/usr/bin/env bash
# Builds the CLIs the tests run, each from its published Go module pinned in
# a go.mod of its own (so their dependency graphs never mix), and caches
# them under target/tools/bin:
#   helm        (go.mod here)          the deploy tests
#   promtool    (promtool/go.mod)      checks and unit-tests the alert rules
#   actionlint  (actionlint/go.mod)    lints .github/workflows
# and takes the Prometheus Operator's CRDs (PrometheusRule, PodMonitor) from
# its module at a pinned release into target/tools/crds, so the chart's
# monitoring objects are installed against their real schema.
# A stamp per tool (its go.mod, go.sum and build flags) makes reruns free.
# Arguments name the tools to build (default: all). kubectl comes from
# tests/controlplane/build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${WSBRIDGE_TOOLS_BIN:-${CARGO_TARGET_DIR:-$root/target}/tools/bin}
crds=$(dirname "$out")/crds
prometheus_operator=v0.85.0
mkdir -p "$out"
# Test binaries run in parallel and may all ask for the tools at once.
exec 9>"$out/.lock"
flock 9

# build NAME MODULE_DIR PACKAGE GO_BUILD_ARGS...
build() {
  local name=$1 dir=$2 pkg=$3
  shift 3
  local stamp
  stamp=$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$pkg $*") | sha256sum | cut -c1-16)
  if [[ -x "$out/$name" && -f "$out/.stamp-$name" && "$(cat "$out/.stamp-$name")" == "$stamp" ]]; then
    echo "tools: $name cached in $out"
    return
  fi
  local start
  start=$(date +%s)
  echo "tools: building $name (first time takes a few minutes)"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath "$@" -o "$out/$name" "$pkg")
  echo "$stamp" >"$out/.stamp-$name"
  echo "tools: built $name in $(($(date +%s) - start))s into $out"
}

helm() {
  local version k8s_minor ldflags pkg
  version=$(cd "$here" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
  # helm's Makefile derives the default Kubernetes version (Capabilities, lint
  # deprecations) from the client-go it is built with: client-go v0.X.Y -> 1.X.
  k8s_minor=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
  ldflags="-s -w"
  ldflags+=" -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  build helm "$here" helm.sh/helm/v3/cmd/helm -ldflags="$ldflags"
}

promtool() {
  local version
  version=$(cd "$here/promtool" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
  # remove_all_sd leaves out the service discovery plugins (cloud SDKs):
  # rule checks and rule unit tests need none of them.
  build promtool "$here/promtool" github.com/prometheus/prometheus/cmd/promtool \
    -tags remove_all_sd \
    -ldflags="-s -w -X github.com/prometheus/common/version.Version=$version"
}

actionlint() {
  local version
  version=$(cd "$here/actionlint" && go list -m -f '{{.Version}}' github.com/rhysd/actionlint)
  build actionlint "$here/actionlint" github.com/rhysd/actionlint/cmd/actionlint \
    -ldflags="-s -w -X github.com/rhysd/actionlint.version=$version"
}

monitoring_crds() {
  local want="$crds/$prometheus_operator"
  if [[ -f "$want/monitoring.coreos.com_prometheusrules.yaml" ]]; then
    echo "tools: Prometheus Operator CRDs cached in $want"
    return
  fi
  # go verifies the module against the checksum database.
  local dir
  dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$prometheus_operator" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$want"
  for kind in prometheusrules podmonitors; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$want/"
  done
  echo "tools: Prometheus Operator $prometheus_operator CRDs in $want"
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(helm promtool actionlint monitoring_crds)
for tool in "${tools[@]}"; do
  case $tool in
  helm | promtool | actionlint | monitoring_crds) "$tool" ;;
  *) echo "tools: unknown tool $tool" >&2 && exit 2 ;;
  esac
done
