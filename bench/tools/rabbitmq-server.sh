#!/usr/bin/env bash
# Starts a throwaway RabbitMQ server for the rabbitmq bench, the way the
# tests do (tests/support/rabbitmq.rs): Debian's rabbitmq-server (installed
# by tests/tools/rabbitmq.sh when missing), its own epmd, node name, Erlang
# cookie, data and log directories, on free loopback ports. Foreground: it
# runs until killed; the caller kills its process group.
#
#   bash bench/tools/rabbitmq-server.sh DIR      # writes DIR/url (amqp://user:pass@127.0.0.1:port/%2f)
#
# The broker is started in a session of its own (setsid): DIR/pgid holds
# its process group, to be killed with `kill -KILL -- -PGID`; so is epmd's
# (DIR/epmd.pgid). DIR/ready appears once the AMQP listener accepts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
server=/usr/lib/rabbitmq/bin/rabbitmq-server
dir="${1:?usage: rabbitmq-server.sh DIR}"

[[ -x $server ]] || bash "$root/tests/tools/rabbitmq.sh" >&2
mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
dir="$(cd "$dir" && pwd)"
read -r amqp dist epmd_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
user=wsbench
pass="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
id="wsbench-$$"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
chmod 400 "$dir/home/.erlang.cookie"
cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp
default_user = $user
default_pass = $pass
loopback_users = none
log.console = true
log.console.level = warning
log.file = false
CONF
echo "[]." >"$dir/enabled_plugins"
: >"$dir/rabbitmq-env.conf"
export HOME="$dir/home" ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd_port"
export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_NODENAME="$id@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp"
export RABBITMQ_DIST_PORT="$dist" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

setsid epmd -address 127.0.0.1 -port "$epmd_port" >>"$dir/server.log" 2>&1 &
echo $! >"$dir/epmd.pgid"
setsid "$server" >>"$dir/server.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/pgid"
echo "amqp://$user:$pass@127.0.0.1:$amqp/%2f" >"$dir/url"
for _ in $(seq 1 600); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$amqp") 2>/dev/null; then
    touch "$dir/ready"
    echo "rabbitmq: ready on 127.0.0.1:$amqp ($(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null))" >&2
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || { echo "rabbitmq: server exited; log: $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
  sleep 0.2
done
echo "rabbitmq: not ready within 120 s; log: $dir/server.log" >&2
exit 1
