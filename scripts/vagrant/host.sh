#!/usr/bin/env bash
# What the host needs before `vagrant up` with the libvirt provider, and what it started, stopped
# again afterwards: libvirt's daemons when no systemd starts them, and a storage pool.
#
#   host.sh up <state dir>     prints `BATON_LIBVIRT_DRIVER=kvm` or `=qemu` (eval it)
#   host.sh down <state dir>   stops the daemons `up` started (their pids are in the state dir)
#
# KVM or TCG: stock guests need a full KVM. Where /dev/kvm is missing, or is kvm_pvm (a
# hypervisor for PVM guest kernels only: a stock Debian kernel does not boot on it), the VMs run
# under QEMU's TCG, the software emulator (driver qemu), and libvirtd must not see /dev/kvm at
# all: its QEMU capability probe (accel=kvm:tcg) hangs on kvm_pvm, and every domain definition
# with it. So it runs in a private mount namespace where /dev/kvm is /dev/null, with its cached
# capabilities removed. Function only: timings under TCG say nothing about real hardware.
set -euo pipefail
cmd=${1:-}
state=${2:-}
[ -n "$cmd" ] && [ -n "$state" ] || { echo "usage: $0 up|down <state dir>" >&2; exit 2; }
mkdir -p "$state"

kvm_usable() {
  [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]
}

case $cmd in
up)
  if kvm_usable; then driver=kvm; else driver=qemu; fi
  if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
      systemctl start virtlogd.socket libvirtd.service >&2
    else
      virtlogd -d -p "$state/virtlogd.pid"
      if [ "$driver" = kvm ]; then
        libvirtd -d -p "$state/libvirtd.pid"
      else
        rm -rf /var/cache/libvirt/qemu/capabilities
        unshare --mount --propagation private sh -c '[ -e /dev/kvm ] && mount --bind /dev/null /dev/kvm; exec libvirtd -d -p "$1"' sh "$state/libvirtd.pid"
      fi
      for _ in $(seq 1 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
      virsh -c qemu:///system version >/dev/null || { echo "host: libvirtd did not answer" >&2; exit 1; }
    fi
  fi
  if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
    mkdir -p /var/lib/libvirt/images
    virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
    echo default >"$state/pool-defined"
  fi
  virsh -c qemu:///system pool-start default >/dev/null 2>&1 || true
  echo "BATON_LIBVIRT_DRIVER=$driver"
  ;;
down)
  if [ -f "$state/pool-defined" ]; then
    virsh -c qemu:///system pool-destroy default >/dev/null 2>&1 || true
    virsh -c qemu:///system pool-undefine default >/dev/null 2>&1 || true
    rm -f "$state/pool-defined"
  fi
  for d in libvirtd virtlogd; do
    f=$state/$d.pid
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
  ;;
*) echo "usage: $0 up|down <state dir>" >&2; exit 2 ;;
esac
