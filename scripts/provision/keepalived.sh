#!/usr/bin/env bash
# Installs keepalived for a Baton distributor as a systemd service and (re)starts it; run after
# batond.sh (which installs /opt/baton, /etc/baton/cluster.yaml and /etc/baton/batond.env), from
# the built repository it installs (the Vagrant VMs run it from /vagrant).
#
#   keepalived.sh <node>
#
# Only on a node named in the cluster file's `distributors` when there are two or more: on any
# other node it disables baton-keepalived.service (if installed) and exits 0. keepalived comes
# from Debian's package (the box has it: scripts/deps.sh); the package's own keepalived.service,
# which reads /etc/keepalived/keepalived.conf, is masked: Baton's unit runs it with the config
# baton-keepalived writes from the cluster file (docs/operations.md, "Backup distributor").
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 <node>" >&2
  exit 2
fi
node=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
config=/etc/baton/cluster.yaml
[ -f "$config" ] || { echo "keepalived: $config missing (run batond.sh first)" >&2; exit 1; }
command -v keepalived >/dev/null || { echo "keepalived: the keepalived package is not installed" >&2; exit 1; }

# Whether this node runs keepalived, by the schema batond uses.
# shellcheck disable=SC2016 # JavaScript, not shell, in single quotes
role=$(node --input-type=module -e '
  const { readClusterConfig } = await import(process.argv[1]);
  const config = readClusterConfig(process.argv[2]);
  console.log(config.distributors.length > 1 && config.distributors.includes(process.argv[3]) ? "vrrp" : "none");
' "$repo/dist/controller/config/cluster.js" "$config" "$node")

if [ "$role" != vrrp ]; then
  if systemctl list-unit-files baton-keepalived.service >/dev/null 2>&1; then
    systemctl disable --now --quiet baton-keepalived.service 2>/dev/null || true
  fi
  echo "keepalived: $node is not one of two or more distributors: none runs here"
  exit 0
fi

systemctl mask --quiet keepalived.service
install -m 0644 "$repo/deploy/systemd/baton-keepalived.service" /etc/systemd/system/baton-keepalived.service
systemctl daemon-reload
systemctl enable --quiet baton-keepalived.service
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl restart baton-keepalived.service

# keepalived says its first state (BACKUP, then MASTER on one node) on its console: the journal.
# Within BATON_PROVISION_READY_SECONDS (30 by default), as batond.sh.
for _ in $(seq 1 "${BATON_PROVISION_READY_SECONDS:-30}"); do
  if journalctl -u baton-keepalived.service --since "$since" -o cat | grep -E 'Entering (BACKUP|MASTER) STATE' >/dev/null; then
    echo "keepalived: $node running"
    exit 0
  fi
  if systemctl is-failed --quiet baton-keepalived.service; then break; fi
  sleep 1
done
echo "keepalived: $node did not start; last log lines:" >&2
journalctl -u baton-keepalived.service --since "$since" -o cat -n 20 --no-pager >&2
exit 1
