#!/usr/bin/env bash
# Runs one command inside one throwaway Debian 12 VM booted from the Vagrant box (make vagrant-box),
# for what this host's kernel cannot do (kernel TLS, say): QEMU directly, no libvirt, no Vagrant.
#
#   vm-run.sh <command...>   runs the command with bash -lc, as root, in this repository inside the
#                            VM; prints its output and exits with its exit code
#
# The box's disk is extracted once into build/vagrant/vm-run/ (again when the .box is newer) and
# booted with -snapshot: nothing the VM writes to its disk persists. 2 vCPUs, 3 GiB, KVM where it
# runs stock guests, QEMU's TCG otherwise (scripts/vagrant/host.sh says when). User networking,
# ssh as vagrant with Vagrant's insecure key through a forwarded localhost port. The repository is
# shared with virtio-9p and mounted at the same absolute path as here, so the absolute paths in
# dist/ and node_modules hold; what the command writes there is written here (as root). The
# console goes to build/vagrant/vm-run/console.log. Run as root. Bounded: the whole run stops
# after BATON_VM_TIMEOUT seconds (default 1500; exit 124); QEMU and the run's temporary files are
# always removed. Exit 125: the VM could not be started or reached.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 <command...>" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
state=$repo/build/vagrant/vm-run
box=$repo/build/vagrant/baton-local.box
limit=${BATON_VM_TIMEOUT:-1500}
log() { printf '%s vm-run: %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "$*"; exit 125; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -f "$box" ] || fail "no box at $box (make vagrant-box)"
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant 2>/dev/null | head -1)
[ -n "$key" ] || fail "Vagrant's insecure private key not found (the vagrant package)"
mkdir -p "$state"

run=
qemu=
cmd=
watchdog=
teardown() {
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null || true
  [ -n "$cmd" ] && kill "$cmd" 2>/dev/null || true
  if [ -n "$qemu" ] && kill -0 "$qemu" 2>/dev/null; then
    kill "$qemu" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$qemu" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
  fi
  [ -n "$run" ] && rm -rf "$run"
  rm -f "$state/box.img.tmp"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "over ${limit} s, stopping"; exit 124' ALRM
# The whole run is bounded: past the limit, this shell gets SIGALRM (the EXIT trap tears down).
( trap 'kill $s 2>/dev/null; exit 0' TERM; sleep "$limit" & s=$!; wait $s; kill -ALRM $$ ) &
watchdog=$!

if [ ! -f "$state/box.img" ] || [ "$box" -nt "$state/box.img" ]; then
  log "extracting the box's disk into $state"
  tar -xOf "$box" box.img >"$state/box.img.tmp"
  mv -f "$state/box.img.tmp" "$state/box.img"
fi

run=$(mktemp -d "$state/run.XXXXXX")
install -m 0600 "$key" "$run/key" # ssh refuses a private key others can read
if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
  accel=(-accel kvm -cpu host); boot_limit=120; driver=kvm
else
  accel=(-accel tcg,thread=multi -cpu max); boot_limit=240; driver=tcg
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "booting ($driver, ssh on localhost:$port, console in $state/console.log)"
# -snapshot's overlay is created under TMPDIR: in the run's directory, removed with it.
TMPDIR=$run qemu-system-x86_64 -name baton-vm-run "${accel[@]}" -smp 2 -m 3072 \
  -nodefaults -display none -vga none -monitor none -serial "file:$state/console.log" \
  -drive "file=$state/box.img,if=virtio,format=qcow2,cache=unsafe" -snapshot \
  -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0 \
  -virtfs "local,path=$repo,mount_tag=baton,security_model=none,multidevs=remap,id=baton" \
  -device virtio-rng-pci \
  </dev/null >"$state/qemu.log" 2>&1 &
qemu=$!

ssh_opts=(-i "$run/key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR)
vm() { ssh "${ssh_opts[@]}" vagrant@127.0.0.1 "$@"; }
t0=$SECONDS
until vm true </dev/null >/dev/null 2>&1; do
  kill -0 "$qemu" 2>/dev/null || { sed 's/^/  /' "$state/qemu.log" >&2; fail "QEMU stopped (see $state/console.log)"; }
  [ $((SECONDS - t0)) -lt "$boot_limit" ] || fail "no ssh after ${boot_limit} s (see $state/console.log)"
  sleep 2
done
log "ssh up after $((SECONDS - t0)) s"

# The box's hostname in /etc/hosts (sudo complains on every call otherwise), then the repository.
r=$(printf %q "$repo")
timeout 60 ssh "${ssh_opts[@]}" vagrant@127.0.0.1 "sudo sh -c 'echo 127.0.1.1 \$(hostname) >>/etc/hosts' &&
  sudo modprobe 9pnet_virtio && sudo modprobe 9p && sudo mkdir -p $r &&
  sudo mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 baton $r" </dev/null >"$run/mount.log" 2>&1 \
  || { sed 's/^/  /' "$run/mount.log" >&2; fail "could not mount the repository in the VM"; }

# The command runs in the background and the shell waits for it: a signal or the time limit
# interrupts the wait at once (a foreground command would delay the traps until it ended).
inner="cd $r && $*"
vm "sudo bash -lc $(printf %q "$inner")" </dev/null &
cmd=$!
rc=0
wait "$cmd" || rc=$?
cmd=
exit "$rc"
