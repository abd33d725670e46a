#!/usr/bin/env bash
# Installs what cryptvol's root tests and benchmarks run against (idempotent,
# quiet when everything is present): cryptsetup (luksFormat/luksDump for the
# interop tests) and e2fsprogs (mkfs.ext4).
set -euo pipefail
need=()
command -v cryptsetup >/dev/null || need+=(cryptsetup)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} with apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
