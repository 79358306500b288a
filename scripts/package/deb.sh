#!/usr/bin/env bash
# Builds the Baton Debian package from the built repository: how an operator installs Baton on
# their own machines, and how the Vagrant box gets it (scripts/vagrant/box.sh).
#
#   deb.sh [output directory]      default build/deb; prints the package's path
#
# The package holds /opt/baton: the compiled controller (dist/), the BPF objects and libbaton
# (build/), the production node_modules (a copy of the repository's, pruned of the development
# dependencies: no network needed), the systemd units, the provisioning scripts, the example
# clients and the docs; /usr/bin/batonctl; the units in /lib/systemd/system (disabled: the
# provisioning scripts configure and start them). Depends: the runtime set of
# scripts/commands.txt, and libbpf1 (the libbpf.so.1 batond loads). Not Node.js: Debian 12 ships
# 18 and Baton needs 20.19 or later (scripts/provision/nodejs.sh); the package warns without it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/build/deb}
cd "$repo"

for f in dist/controller/bin/batond.js build/bpf/steer.o build/bpf/pass.o build/native/libbaton.so node_modules/.package-lock.json; do
  [ -e "$f" ] || { echo "deb: $repo is not built ($f missing: run make build)" >&2; exit 1; }
done
version=$(node -p 'require("./package.json").version')
arch=$(dpkg --print-architecture)
depends=$( { echo libbpf1; awk '!/^#/ && $3 == "runtime" { print $2 }' scripts/commands.txt; } | sort -u | paste -sd, | sed 's/,/, /g')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
opt=$root/opt/baton
install -d "$opt/build" "$opt/scripts" "$opt/examples" "$root/lib/systemd/system" "$root/usr/bin" "$root/DEBIAN"
cp -a package.json package-lock.json README.md dist docs deploy "$opt/"
cp -a build/bpf build/native "$opt/build/"
cp -a scripts/provision scripts/certs.sh scripts/commands.txt "$opt/scripts/"
cp -a examples/clients "$opt/examples/"
cp -a node_modules "$opt/"
(cd "$opt" && npm prune --omit=dev --no-audit --no-fund --loglevel=error >/dev/null && find node_modules -type d -empty -delete)
install -m 0644 deploy/systemd/*.service "$root/lib/systemd/system/"
cat >"$root/usr/bin/batonctl" <<'SH'
#!/bin/sh
exec node /opt/baton/dist/controller/bin/batonctl.js "$@"
SH
chmod 0755 "$root/usr/bin/batonctl"

cat >"$root/DEBIAN/control" <<CONTROL
Package: baton
Version: $version
Architecture: $arch
Maintainer: Baton developers <baton@example.invalid>
Section: net
Priority: optional
Depends: $depends
Installed-Size: $(du -sk "$root" | cut -f1)
Description: TCP connection handoff controller for Linux clusters
 Hands a live TCP connection from the node that accepted it to another node
 (TCP_REPAIR), and steers the client's later packets there with XDP. batond
 runs on every node; keepalived decides which distributor is active.
CONTROL
cat >"$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
# The units are installed disabled: scripts/provision/batond.sh and keepalived.sh configure and
# start them (docs/operations.md, "On your own machines").
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
  echo "baton: Node.js 20.19 or later is needed on PATH (Debian 12 ships 18): /opt/baton/scripts/provision/nodejs.sh installs it" >&2
fi
exit 0
SH
chmod 0755 "$root/DEBIAN/postinst"

install -d "$out"
deb="$out/baton_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
