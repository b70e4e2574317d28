#!/usr/bin/env bash
# Install the Debian packages the test suite uses (dcmtk: dcmdump reads what DICOMweb serves;
# Orthanc + its DICOMweb plugin: it pushes a study to `make run`'s server by chunked STOW-RS).
# Idempotent; needs root (as on these machines) the first time.
set -euo pipefail
missing=()
command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# Never start a service while installing (Orthanc's): the tests start their own on loopback.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
