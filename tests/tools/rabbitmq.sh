#!/usr/bin/env bash
# Installs RabbitMQ from Debian's packages for the broker tests (bookworm
# ships 3.10), once: a no-op when rabbitmq-server is already installed. The
# tests start their own broker per test run on free loopback ports
# (tests/support/rabbitmq.rs), so the packaged service is kept stopped and
# disabled: nothing listens on 5672 or 4369 between test runs.
set -euo pipefail

if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
  echo "rabbitmq: $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo installed)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "rabbitmq: not installed, and installing it needs root (apt-get install rabbitmq-server)" >&2
  exit 1
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Keep the package's post-install from starting the service: a policy-rc.d
# that refuses every start, for the duration of the install only.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  own_policy=true
fi
apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
$own_policy && rm -f "$policy"
# Whatever started anyway (a machine without the policy file) is stopped.
if command -v service >/dev/null; then service rabbitmq-server stop >/dev/null 2>&1 || true; fi
if command -v update-rc.d >/dev/null; then update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true; fi
if command -v systemctl >/dev/null; then systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true; fi
# The post-install's own commands leave an epmd on the default port; the
# tests run theirs on a port of their own, so this one goes.
epmd -kill >/dev/null 2>&1 || true
echo "rabbitmq: installed $(dpkg-query -W -f '${Version}' rabbitmq-server) in $(( $(date +%s) - start ))s"
