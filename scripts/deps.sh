#!/usr/bin/env bash
# Installs every system package Baton needs (skipped when already present), then the npm dependencies.
# BATON_DEPS=runtime: only what a machine needs to build and run Baton (the Vagrant VMs use it,
# through `make build` too); the default, BATON_DEPS=all, adds what only `make test` needs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  clang llvm libbpf-dev bpftool gcc libc6-dev linux-libc-dev make pkg-config util-linux
  iproute2 ethtool tcpdump socat curl python3 procps openssl
)
case "${BATON_DEPS:-all}" in
  all) packages+=(vagrant) ;; # `make vagrant-validate` checks vagrant/Vagrantfile with it
  runtime) ;;
  *) echo "deps: BATON_DEPS must be all or runtime, not ${BATON_DEPS}" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: system packages present"
fi

# npm ci only when the lockfile changed since the last install: it wipes node_modules.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  echo "deps: node_modules up to date"
fi
