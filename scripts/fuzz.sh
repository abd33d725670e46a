#!/usr/bin/env bash
# Runs every Go fuzz target of the main module for $1 (default 20s) each.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-20s}
for pkg in $(go list -tags containers_image_openpgp ./...); do
  dir=$(go list -tags containers_image_openpgp -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "== $pkg $f ($t)"
    go test -tags containers_image_openpgp -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg"
  done
done
