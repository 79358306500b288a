#!/usr/bin/env bash
# Installs Node.js from the official release tarball: Debian 12 ships Node 18 and Baton needs 20
# (package.json "engines"). Used by the Vagrant provisioning; any Debian machine can run it.
#
#   nodejs.sh   installs NODE_VERSION (default below) unless that version is already there;
#               NODEJS_MIRROR replaces https://nodejs.org/dist (a local mirror of the same layout)
#
# The release lands in /usr/local/lib/nodejs/node-v<version>-linux-<arch>/ with node, npm and npx
# linked into /usr/local/bin, so a later version sits next to it and switching is a relink. The
# tarball is checked against the release's SHASUMS256.txt, fetched from the same HTTPS origin:
# that catches a truncated or corrupted download, not a compromised nodejs.org.
set -euo pipefail

version=${NODE_VERSION:-20.20.2}
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "nodejs: no official Node.js build for $(uname -m)" >&2; exit 1 ;;
esac

if [ "$(/usr/local/bin/node --version 2>/dev/null || true)" = "v$version" ]; then
  echo "nodejs: v$version present"
  exit 0
fi

# A minimal Debian box may lack the downloader and the decompressor.
need=()
for p in curl ca-certificates xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

name=node-v$version-linux-$arch
url=${NODEJS_MIRROR:-https://nodejs.org/dist}/v$version
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "nodejs: downloading $url/$name.tar.xz"
curl -fsSL --retry 3 -o "$tmp/$name.tar.xz" "$url/$name.tar.xz"
curl -fsSL --retry 3 -o "$tmp/SHASUMS256.txt" "$url/SHASUMS256.txt"
(cd "$tmp" && grep " $name.tar.xz\$" SHASUMS256.txt | sha256sum --check --strict --quiet)

mkdir -p /usr/local/lib/nodejs /usr/local/bin
rm -rf "/usr/local/lib/nodejs/$name"
tar -xJf "$tmp/$name.tar.xz" -C /usr/local/lib/nodejs --no-same-owner
for bin in node npm npx; do
  ln -sfn "/usr/local/lib/nodejs/$name/bin/$bin" "/usr/local/bin/$bin"
done
echo "nodejs: $(/usr/local/bin/node --version) in /usr/local/lib/nodejs/$name"
