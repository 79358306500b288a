#!/usr/bin/env bash
# Gives a VM node's cluster interface the name and address cluster.yaml says, whatever the provider
# called it: eth1 under VirtualBox, ens6 or enp0s7 under libvirt, depending on the box's naming
# policy and the PCI slot. The NIC is found by the fixed MAC the Vagrantfile gave it.
#
#   interface.sh <mac> <name> <address>/<prefix-length>
#
# Now: renames the link and brings it up with the address. At every boot: a systemd .link file
# names the NIC by its MAC before ifupdown (the Debian box's network configuration) brings it up.
# Idempotent; a changed address is applied by taking the interface down and up again.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 <mac> <name> <address>/<prefix-length>" >&2
  exit 2
fi
mac=${1,,}
name=$2
cidr=$3
[[ $mac =~ ^([0-9a-f]{2}:){5}[0-9a-f]{2}$ ]] || { echo "interface: bad MAC $1" >&2; exit 2; }
[[ $name =~ ^[A-Za-z0-9_-]{1,15}$ ]] || { echo "interface: bad interface name $name" >&2; exit 2; }
[[ $cidr =~ ^[0-9.]+/[0-9]+$ ]] || { echo "interface: bad address $cidr (want a.b.c.d/len)" >&2; exit 2; }
command -v ifup >/dev/null || { echo "interface: ifupdown is not installed; this box configures its network some other way" >&2; exit 1; }

# Writes stdin to a file; succeeds only when the content changed.
write_if_changed() {
  local file=$1 new
  new=$(cat)
  if [ -f "$file" ] && [ "$(cat "$file")" = "$new" ]; then return 1; fi
  mkdir -p "$(dirname "$file")"
  printf '%s\n' "$new" >"$file"
}

current=
seen=()
for dev in /sys/class/net/*; do
  seen+=("${dev##*/}=$(cat "$dev/address")")
  if [ "$(cat "$dev/address")" = "$mac" ]; then current=${dev##*/}; fi
done
if [ -z "$current" ]; then
  echo "interface: no NIC with MAC $mac; this VM has ${seen[*]}" >&2
  exit 1
fi

if write_if_changed "/etc/systemd/network/10-$name.link" <<EOF; then
# Written by Baton provisioning (scripts/provision/interface.sh): cluster.yaml names this NIC $name.
[Match]
MACAddress=$mac

[Link]
Name=$name
EOF
  # The initramfs carries its own copy of the .link files and names NICs first, if it holds their
  # driver; Baton's own box leaves NIC drivers out of it (scripts/vagrant/box.sh), nothing to rebuild.
  if command -v update-initramfs >/dev/null && [ ! -e /etc/initramfs-tools/hooks/zz-baton-no-nic-drivers ]; then update-initramfs -u; fi
fi

if [ "$current" != "$name" ]; then
  if [ -e "/sys/class/net/$name" ]; then
    echo "interface: $name already names another NIC; cannot rename $current" >&2
    exit 1
  fi
  ip link set dev "$current" down
  ip link set dev "$current" name "$name"
  echo "interface: $current renamed to $name"
fi

if ! grep -Eq '^[[:space:]]*source(-directory)?[[:space:]]+/etc/network/interfaces\.d' /etc/network/interfaces; then
  printf '\nsource /etc/network/interfaces.d/*\n' >>/etc/network/interfaces
fi
changed=false
if write_if_changed "/etc/network/interfaces.d/$name" <<EOF; then changed=true; fi
# Written by Baton provisioning (scripts/provision/interface.sh).
auto $name
iface $name inet static
    address $cidr
EOF
if ifquery --state "$name" >/dev/null 2>&1; then
  if $changed; then
    # ifdown would remove the address the file now names, not the one the interface has.
    ifdown --force "$name"
    ip -4 address flush dev "$name"
    ifup "$name"
  fi
else
  ifup "$name"
fi
ip -br address show dev "$name"
