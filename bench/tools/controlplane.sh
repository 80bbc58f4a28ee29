#!/usr/bin/env bash
# Starts a throwaway Kubernetes API server for the rabbitmq bench, the way
# the tests do (tests/support/controlplane.rs): etcd and kube-apiserver
# built from source by tests/controlplane/build.sh (cached under the target
# dir), on free loopback ports, with a data dir of their own; then installs
# the CRDs. The bench runs `wsbridge dispatcher` against it: the role
# itself, with its watches of Channels and Subscriptions.
#
#   bash bench/tools/controlplane.sh DIR     # writes DIR/kubeconfig
#
# Both run in one session of their own (setsid): DIR/pgid holds the
# process group, to be killed with `kill -KILL -- -PGID`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/controlplane/bin"
dir="${1:?usage: controlplane.sh DIR}"

bash "$root/tests/controlplane/build.sh" >&2
mkdir -p "$dir/certs"
dir="$(cd "$dir" && pwd)"
read -r etcd peer api < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key" 2>/dev/null
openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
echo "$token,wsbench-admin,wsbench-admin,\"system:masters\"" >"$dir/tokens.csv"

# One session for both, so one kill stops them.
setsid bash -c '
  "$1/etcd" --name=default --data-dir="$2/etcd" \
    --listen-client-urls=http://127.0.0.1:$3 --advertise-client-urls=http://127.0.0.1:$3 \
    --listen-peer-urls=http://127.0.0.1:$4 --initial-advertise-peer-urls=http://127.0.0.1:$4 \
    --initial-cluster=default=http://127.0.0.1:$4 --unsafe-no-fsync=true --log-level=warn >"$2/etcd.log" 2>&1 &
  exec "$1/kube-apiserver" --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port=$5 \
    --cert-dir="$2/certs" --etcd-servers=http://127.0.0.1:$3 --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --service-account-key-file="$2/sa.pub" --service-account-signing-key-file="$2/sa.key" \
    --token-auth-file="$2/tokens.csv" --authorization-mode=RBAC --disable-admission-plugins=ServiceAccount \
    --enable-priority-and-fairness=false --profiling=false --v=0 >"$2/apiserver.log" 2>&1
' controlplane "$bin" "$dir" "$etcd" "$peer" "$api" &
echo $! >"$dir/pgid"

export KUBECONFIG="$dir/kubeconfig"
# The apiserver writes its self-signed serving certificate before it
# listens: trust exactly that one.
write_kubeconfig() {
  cat >"$KUBECONFIG" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: "https://127.0.0.1:$api", certificate-authority: "$dir/certs/apiserver.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: bench
  context: {cluster: bench, user: admin}
current-context: bench
YAML
}
for _ in $(seq 1 600); do
  if [[ ! -f $KUBECONFIG ]] && grep -q -- "-----END CERTIFICATE-----" "$dir/certs/apiserver.crt" 2>/dev/null; then
    write_kubeconfig
  fi
  if [[ -f $KUBECONFIG && "$("$bin/kubectl" get --raw /readyz 2>/dev/null)" == ok ]]; then
    "$bin/kubectl" apply -f "$root/crds" >/dev/null
    "$bin/kubectl" wait --for condition=established --timeout=60s crd --all >/dev/null
    echo "controlplane: ready on 127.0.0.1:$api" >&2
    exit 0
  fi
  kill -0 "$(cat "$dir/pgid")" 2>/dev/null || { echo "controlplane: exited; logs in $dir" >&2; tail -20 "$dir/apiserver.log" >&2; exit 1; }
  sleep 0.2
done
echo "controlplane: not ready within 120 s; logs in $dir" >&2
exit 1
