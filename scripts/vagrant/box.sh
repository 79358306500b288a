#!/usr/bin/env bash
# Builds the Vagrant box the VMs boot (provider libvirt), offline: Debian 12 from Debian's archive
# (mmdebstrap), and Baton installed from its own .deb (scripts/package/deb.sh), the way an
# operator installs it, with Node.js 20 copied from this host (Debian 12 ships 18). `vagrant up`
# then provisions only configuration (addresses, certificates, tokens, the cluster file).
#
#   box.sh <baton .deb> <output .box>
#
# Run as root (loop device, chroot). The disk: one ext4 partition (no 64bit feature: extlinux
# reads it), the root copied in with its extended attributes (file capabilities such as ping's),
# extlinux and a classic MBR; qcow2. The image: ifupdown with DHCP on eth0 (the libvirt management
# network Vagrant talks to; Vagrant's Debian guest steps and provision/interface.sh use ifupdown
# for the others, as on Debian's own boxes), OpenSSH, user vagrant with
# Vagrant's insecure key (replaced at the first `vagrant up`) and passwordless sudo, an empty
# machine-id (each VM makes its own). The initramfs holds no NIC driver (the box boots from its
# disk): NICs are named once, by the system's udev, so provision/interface.sh's .link file needs no
# new initramfs (mkinitramfs takes over ten minutes inside a TCG guest).
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 <baton .deb> <output .box>" >&2; exit 2; fi
deb=$(realpath "$1")
box=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "box: run as root (loop device, chroot)" >&2; exit 1; }
node_bin=$(command -v node)
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$key" ] || { echo "box: Vagrant's insecure public key not found (the vagrant package)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/baton-box.XXXXXX)
mnt=$work/mnt
loop=
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# What the image holds besides Baton's own dependencies (which its .deb names): booting, systemd,
# SSH, sudo, networking, and what Vagrant's guest steps run (hostnamectl needs dbus).
base=linux-image-amd64,systemd-sysv,udev,openssh-server,sudo,iproute2,ifupdown,isc-dhcp-client,ca-certificates,kmod,initramfs-tools,netbase,rsync,dbus,libpam-systemd,libstdc++6,socat
deps=$(dpkg-deb --field "$deb" Depends | sed 's/ //g')
mirror=
[ -f /etc/apt/sources.list.d/debian.sources ] && mirror=/etc/apt/sources.list.d/debian.sources

echo "box: root filesystem (mmdebstrap)"
mmdebstrap --quiet --variant=minbase --include="$base,$deps" \
  --customize-hook="copy-in $node_bin /usr/local/bin" \
  --customize-hook="copy-in $deb /var/tmp" \
  --customize-hook='chroot "$1" dpkg -i /var/tmp/'"$(basename "$deb")" \
  --customize-hook='rm -f "$1"/var/tmp/*.deb' \
  --customize-hook='chroot "$1" useradd --create-home --shell /bin/bash --groups sudo vagrant' \
  --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" >"$1"/etc/sudoers.d/vagrant; chmod 0440 "$1"/etc/sudoers.d/vagrant' \
  --customize-hook="mkdir -p \"\$1\"/home/vagrant/.ssh; cp $key \"\$1\"/home/vagrant/.ssh/authorized_keys" \
  --customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh; chmod 0700 "$1"/home/vagrant/.ssh; chmod 0600 "$1"/home/vagrant/.ssh/authorized_keys' \
  --customize-hook='printf "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n" >"$1"/etc/network/interfaces' \
  --customize-hook='chroot "$1" systemctl enable ssh' \
  --customize-hook='chroot "$1" systemctl mask keepalived.service' \
  --customize-hook='echo baton >"$1"/etc/hostname; : >"$1"/etc/machine-id; rm -f "$1"/var/lib/dbus/machine-id' \
  --customize-hook='echo "LABEL=baton-root / ext4 errors=remount-ro 0 1" >"$1"/etc/fstab' \
  --customize-hook="install -m 0755 $repo/scripts/vagrant/initramfs-no-nic-drivers \"\$1\"/etc/initramfs-tools/hooks/zz-baton-no-nic-drivers" \
  --customize-hook='chroot "$1" update-initramfs -u' \
  bookworm "$work/root.tar" $mirror

echo "box: disk"
size_gb=8
raw=$work/box.raw
truncate -s ${size_gb}G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk --quiet "$raw"
offset=$((2048 * 512))
loop=$(losetup --find --show --offset "$offset" "$raw")
mkfs.ext4 -q -O ^64bit -L baton-root "$loop"
mkdir -p "$mnt"
mount "$loop" "$mnt"
tar -C "$mnt" --xattrs --xattrs-include='*' --numeric-owner -xpf "$work/root.tar"
mkdir -p "$mnt/boot/extlinux"
kernel=$(cd "$mnt/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=$(cd "$mnt/boot" && ls initrd.img-* | sort -V | tail -1)
cat >"$mnt/boot/extlinux/extlinux.conf" <<CONF
DEFAULT baton
TIMEOUT 0
LABEL baton
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=LABEL=baton-root ro net.ifnames=0 console=ttyS0
CONF
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
umount "$mnt"
losetup -d "$loop"
loop=
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

echo "box: qcow2 and box"
qemu-img convert -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gb" >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'VF'
# The box's defaults; the project's Vagrantfile chooses the driver (kvm, or qemu where KVM cannot run it).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
VF
mkdir -p "$(dirname "$box")"
tar -C "$work" -cf "$box.tmp" metadata.json Vagrantfile box.img
mv -f "$box.tmp" "$box"
echo "$box"
