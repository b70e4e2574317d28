#!/usr/bin/env bash
# Install the pinned OHIF v3 build (npm package @ohif/app ships a built dist/) into DEST/dist.
# Usage: scripts/install_ohif.sh VERSION DEST
set -euo pipefail
version=$1
dest=$2
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is needed to fetch @ohif/app; installing Debian's nodejs and npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
fi
mkdir -p "$dest"
work=$(mktemp -d "$dest/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
# npm pack checks the tarball against the registry's integrity hash; no install scripts run.
(cd "$work" && npm pack --silent "@ohif/app@$version" >/dev/null)
tar -xzf "$work/ohif-app-$version.tgz" -C "$work"
rm -rf "$dest/dist"
mv "$work/package/dist" "$dest/dist"
rm -f "$dest"/.installed-*
touch "$dest/.installed-$version"
echo "OHIF $version installed in $dest/dist" >&2
