#!/usr/bin/env bash
# Install the Debian packages PACS-lite uses. Idempotent; needs root (as on these machines) the
# first time.
#
#   bash scripts/system_packages.sh serve   what `make run` serves with: nginx-light, in front of
#                                           both ports (config/front_proxy.py)
#   bash scripts/system_packages.sh         that, and what the test suite uses too: dcmtk (dcmdump
#                                           reads what DICOMweb serves), dicom3tools, Orthanc + its
#                                           DICOMweb plugin (it pushes a study by chunked STOW-RS)
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${1:-}" != serve ]; then
    command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
    command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
    command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
    [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# Never start a service while installing (Orthanc's, nginx's default site on port 80): PACS-lite
# and the tests start their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
# Debian's nginx package enables its own service with a default site on port 80: PACS-lite runs its
# own nginx (config/front_proxy.py), so the one installed here must not start at the next boot.
if [[ " ${missing[*]} " == *" nginx-light "* ]]; then
    rm -f /etc/nginx/sites-enabled/default
    if command -v systemctl >/dev/null 2>&1; then systemctl disable nginx.service >/dev/null 2>&1 || true; fi
fi
