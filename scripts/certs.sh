#!/usr/bin/env bash
# The cluster CA and node certificates for batond's mutual-TLS peer links and its HTTPS REST API
# (docs/operations.md, docs/api.md).
# The namespace lab runs it for each lab; on machines, run it once where the CA key is kept and
# copy each node its own certificate and key (never the CA key).
#
#   certs.sh ca   <dir>                 creates <dir>/ca.crt and <dir>/ca.key unless present
#   certs.sh node <dir> <node> <ip>     creates <dir>/<node>.crt and <dir>/<node>.key, signed by the CA
#
# A node certificate names the node (CN and DNS SAN) and its management address (IP SAN): batond
# accepts a peer only if the certificate's name is a node of the cluster file and the connection
# comes from that node's address. It is good for both ends of TLS (serverAuth, clientAuth): the
# peer links, the API a client reaches by the node's address (curl --cacert ca.crt
# https://<ip>:<port>/), and the API requests one node forwards to another. P-256 keys;
# certificates valid for 825 days.
set -euo pipefail

usage() {
  echo "usage: $0 ca <dir> | $0 node <dir> <node> <ip>" >&2
  exit 2
}
[ $# -ge 2 ] || usage
cmd=$1
dir=$2
install -d -m 0700 "$dir"
umask 077

case "$cmd" in
  ca)
    [ $# -eq 2 ] || usage
    if [ ! -f "$dir/ca.crt" ] || [ ! -f "$dir/ca.key" ]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 825 \
        -subj "/CN=baton cluster CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    fi
    ;;
  node)
    [ $# -eq 4 ] || usage
    node=$3
    ip=$4
    [[ $node =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || { echo "certs: bad node name $node" >&2; exit 2; }
    [ -f "$dir/ca.crt" ] && [ -f "$dir/ca.key" ] || { echo "certs: no CA in $dir (run: $0 ca $dir)" >&2; exit 1; }
    ext=$(mktemp)
    trap 'rm -f "$ext" "$dir/$node.csr"' EXIT
    printf 'subjectAltName=DNS:%s,IP:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n' "$node" "$ip" >"$ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
      -subj "/CN=$node" -keyout "$dir/$node.key" -out "$dir/$node.csr" 2>/dev/null
    openssl x509 -req -sha256 -days 825 -in "$dir/$node.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -extfile "$ext" -out "$dir/$node.crt" 2>/dev/null
    ;;
  *)
    usage
    ;;
esac
