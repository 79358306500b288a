#!/usr/bin/env bash
# Kernel settings a Baton node needs before batond starts, shared by the namespace lab (run inside
# each node's namespace) and the Vagrant VMs.
#
#   sysctls.sh <interface>            apply now (in the caller's network namespace)
#   sysctls.sh <interface> --persist  also write /etc/sysctl.d/60-baton.conf so a reboot keeps them
#
# rp_filter 0: a target answers from the DVIPA a client whose packets reached it through the
# distributor's XDP program, not through its own route to the client; strict (1) or loose (2)
# reverse-path filtering can drop those packets. The kernel uses the larger of `all` and the
# interface's value, so both must be 0; `default` covers interfaces created later.
# The DVIPA itself and its ARP sysctls (arp_ignore, arp_announce) are batond's job at start
# (controller/agent/dvipa.ts), since they depend on whether the node is the distributor.
set -euo pipefail

usage() { echo "usage: $0 <interface> [--persist]" >&2; exit 2; }
case $# in 1 | 2) ;; *) usage ;; esac
dev=$1
persist=false
if [ $# -eq 2 ]; then
  [ "$2" = --persist ] || usage
  persist=true
fi
if [ ! -d "/proc/sys/net/ipv4/conf/$dev" ]; then
  echo "sysctls: no interface $dev in this network namespace" >&2
  exit 1
fi

# Slash-separated keys: an interface name may contain dots (a VLAN such as eth0.100).
settings=(
  net/ipv4/conf/all/rp_filter=0
  net/ipv4/conf/default/rp_filter=0
  "net/ipv4/conf/$dev/rp_filter=0"
)
sysctl -q -w "${settings[@]}"

if $persist; then
  # 60- sorts after the distribution's 50-default.conf, which may set rp_filter to 2.
  printf '# Written by Baton provisioning (scripts/provision/sysctls.sh); see docs/operations.md.\n' >/etc/sysctl.d/60-baton.conf
  printf '%s\n' "${settings[@]}" >>/etc/sysctl.d/60-baton.conf
fi
