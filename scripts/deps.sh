#!/usr/bin/env bash
# Installs every system package Baton needs (skipped when already present), then the npm dependencies.
# The packages come from scripts/commands.txt, the one list of the programs Baton runs, which the
# test suite also checks at start (test/setup/commands.ts).
#
#   BATON_DEPS=runtime  build and run Baton: the sets build and runtime (the Vagrant VMs use it,
#                       through `make build` too)
#   BATON_DEPS=all      the default: adds the set test, what only `make test` needs
#   BATON_DEPS=bench    adds the set bench too (`make bench-deps`)
#   BATON_DEPS=vm       adds the set vm to all: the Vagrant VMs' host side (`make vagrant-box`)
#
#   deps.sh --packages  prints the packages of BATON_DEPS's sets, one per line, and installs nothing
set -euo pipefail
cd "$(dirname "$0")/.."

case "${BATON_DEPS:-all}" in
  runtime) sets=" build runtime " ;;
  all) sets=" build runtime test " ;;
  bench) sets=" build runtime test bench " ;;
  vm) sets=" build runtime test vm " ;;
  *) echo "deps: BATON_DEPS must be runtime, all, bench or vm, not ${BATON_DEPS}" >&2; exit 2 ;;
esac

packages=()
line_no=0
while read -r what package set _; do
  line_no=$((line_no + 1))
  [[ -z $what || $what == \#* ]] && continue
  if [[ -z ${set:-} || " build runtime test bench vm " != *" $set "* ]]; then
    echo "deps: scripts/commands.txt:$line_no: want <command or path> <package> <build|runtime|test|bench|vm> <who>, got: $what ${package:-} ${set:-}" >&2
    exit 2
  fi
  [[ $sets == *" $set "* ]] && packages+=("$package")
done <scripts/commands.txt
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

if [ "${1:-}" = --packages ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

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
