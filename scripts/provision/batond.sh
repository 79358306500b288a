#!/usr/bin/env bash
# Installs batond as a systemd service on a node and (re)starts it; run from the built repository
# it installs (the Vagrant VMs run it from /vagrant).
#
#   batond.sh <node> <cluster.yaml>
#
# Installs /opt/baton -> this repository (unless it is /opt/baton), /etc/baton/cluster.yaml,
# /etc/baton/batond.env naming the node, and deploy/systemd/batond.service. The secrets go where
# cluster.yaml says (api.tokenFile, tls.caFile, the node's certFile and keyFile): each is written
# from its variable when that is set, otherwise the file must already be in place:
#   BATON_PROVISION_API_TOKEN   an admin operator's API token: the token file gets one line, its
#                               SHA-256 as operator BATON_PROVISION_API_OPERATOR (default admin);
#                               the token itself is not written on the node (docs/api.md)
#   BATON_PROVISION_API_TOKENS  instead: the token file's content, lines of batonctl token new
#   BATON_PROVISION_CA_CERT     the cluster CA certificate (PEM; never the CA key)
#   BATON_PROVISION_NODE_CERT   this node's certificate and key (PEM), from scripts/certs.sh
#   BATON_PROVISION_NODE_KEY
# Restarting a running batond drops no handed-off connection (docs/operations.md), so re-running
# this is also how a node is upgraded.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 <node> <cluster.yaml>   (secrets: see the header of this script)" >&2
  exit 2
fi
node=$1
config=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ ! -f "$repo/dist/controller/bin/batond.js" ] || [ ! -f "$repo/build/bpf/steer.o" ]; then
  echo "batond: $repo is not built (run make build there)" >&2
  exit 1
fi

# Validated by the schema batond uses; the paths of this node's secrets come out of it.
# shellcheck disable=SC2016 # JavaScript, not shell, in single quotes
mapfile -t paths < <(node --input-type=module -e '
  const { readClusterConfig, nodeByName } = await import(process.argv[1]);
  let config;
  try {
    config = readClusterConfig(process.argv[2]);
  } catch (err) {
    console.error(`batond: ${err.message}`);
    process.exit(2);
  }
  const self = nodeByName(config, process.argv[3]);
  if (!self) { console.error(`batond: node ${process.argv[3]} is not in ${process.argv[2]}`); process.exit(2); }
  console.log([config.api.tokenFile, config.tls.caFile, self.certFile, self.keyFile].join("\n"));
' "$repo/dist/controller/config/cluster.js" "$config" "$node")
[ "${#paths[@]}" -eq 4 ] || exit 2
token_file=${paths[0]} ca_file=${paths[1]} cert_file=${paths[2]} key_file=${paths[3]}

# A token short enough to guess would make its stored hash guessable too; a bearer token has no
# spaces (RFC 6750). The token file's line: "<operator> admin sha256:<hex>".
if [ -n "${BATON_PROVISION_API_TOKEN+set}" ]; then
  token=$BATON_PROVISION_API_TOKEN
  operator=${BATON_PROVISION_API_OPERATOR:-admin}
  if [ "${#token}" -lt 32 ] || ! [[ $token =~ ^[A-Za-z0-9._~+/-]+=*$ ]]; then
    echo "batond: BATON_PROVISION_API_TOKEN must hold at least 32 characters of A-Z a-z 0-9 . _ ~ + / - (batonctl token new makes one)" >&2
    exit 2
  fi
  if ! [[ $operator =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]]; then
    echo "batond: BATON_PROVISION_API_OPERATOR $operator is not an operator name" >&2
    exit 2
  fi
  BATON_PROVISION_API_TOKENS="$operator admin sha256:$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
  export BATON_PROVISION_API_TOKENS
fi

# install_secret <variable> <file> <mode>: the variable's value into the file, never readable
# by others on the way, or, without the variable, a check that the file is there.
install_secret() {
  local var=$1 file=$2 mode=$3
  if [ -z "${!var+set}" ]; then
    [ -f "$file" ] || { echo "batond: $file missing (set $var, or put the file there)" >&2; exit 1; }
    return
  fi
  install -d -m 0755 "$(dirname "$file")"
  (
    umask 077
    printf '%s\n' "${!var}" >"$file.new"
    chmod "$mode" "$file.new"
    mv -f "$file.new" "$file"
  )
}
install_secret BATON_PROVISION_API_TOKENS "$token_file" 0600
install_secret BATON_PROVISION_CA_CERT "$ca_file" 0644
install_secret BATON_PROVISION_NODE_CERT "$cert_file" 0644
install_secret BATON_PROVISION_NODE_KEY "$key_file" 0600

# The token file as batond reads it (mode, owner, every line), so provisioning fails here rather
# than batond at its start.
# shellcheck disable=SC2016 # JavaScript, not shell, in single quotes
node --input-type=module -e '
  const { loadOperatorTokens } = await import(process.argv[1]);
  try {
    loadOperatorTokens(process.argv[2]);
  } catch (err) {
    console.error(`batond: ${err.message}`);
    process.exit(2);
  }
' "$repo/dist/controller/api/token.js" "$token_file"

if [ "$repo" != /opt/baton ]; then
  if [ -e /opt/baton ] && [ ! -L /opt/baton ]; then
    echo "batond: /opt/baton exists and is not a symlink; not replacing it with one to $repo" >&2
    exit 1
  fi
  ln -sfn "$repo" /opt/baton
fi
install -d -m 0755 /etc/baton
install -m 0644 "$config" /etc/baton/cluster.yaml
printf 'BATON_NODE=%s\nBATON_CONFIG=/etc/baton/cluster.yaml\n' "$node" >/etc/baton/batond.env

install -m 0644 "$repo/deploy/systemd/batond.service" /etc/systemd/system/batond.service
systemctl daemon-reload
systemctl enable --quiet batond.service
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl restart batond.service

# Type=exec only says the process started; "batond ready" says it serves. Within
# BATON_PROVISION_READY_SECONDS (30 by default; a VM under software emulation needs more).
for _ in $(seq 1 "${BATON_PROVISION_READY_SECONDS:-30}"); do
  # Not grep -q: leaving early would kill journalctl with SIGPIPE, which pipefail reports as failure.
  if journalctl -u batond.service --since "$since" -o cat | grep '"msg":"batond ready"' >/dev/null; then
    echo "batond: $node ready"
    exit 0
  fi
  if systemctl is-failed --quiet batond.service; then break; fi
  sleep 1
done
echo "batond: $node did not become ready; last log lines:" >&2
journalctl -u batond.service --since "$since" -o cat -n 20 --no-pager >&2
exit 1
