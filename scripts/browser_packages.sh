#!/usr/bin/env bash
# Install the Debian packages the browser tests use: chromium (Playwright's Python package drives
# /usr/bin/chromium; `playwright install` is never used) and a text font for OHIF's labels.
# Idempotent; needs root (as on these machines) the first time. Called by `make test`.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ! dpkg-query -W -f='${Status}' fonts-liberation 2>/dev/null | grep -q "install ok installed"; then
  missing+=(fonts-liberation)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser tests need ${missing[*]}: install them (Debian/Ubuntu: apt-get install -y ${missing[*]})" >&2
  exit 1
fi
echo "Installing ${missing[*]} (apt-get, about 110 MB for chromium)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
[ -x /usr/bin/chromium ] || { echo "apt-get did not install /usr/bin/chromium" >&2; exit 1; }
