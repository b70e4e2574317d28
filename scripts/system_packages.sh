#!/usr/bin/env bash
# Install the Debian packages the test suite uses (dcmtk: dcmdump reads what DICOMweb serves).
# Idempotent; needs root (as on these machines) the first time.
set -euo pipefail
missing=()
command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
