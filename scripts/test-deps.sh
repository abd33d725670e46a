#!/usr/bin/env bash
# Installs the Debian packages the unit tests need (idempotent, quiet when
# everything is present): the go-tpm-tools simulator is C code built with cgo
# and links OpenSSL.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "install ok installed" || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# cryptvol's interop tests run the real cryptsetup and mkfs.ext4.
"$(dirname "$0")/cryptvol-deps.sh"
