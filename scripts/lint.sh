#!/usr/bin/env bash
# Lints both modules (the root module and e2e/) with golangci-lint; the
# configuration is .golangci.yml. The linter's version is pinned below; it is
# built from the Go module proxy into bin/tools/ (git-ignored) on first use.
#
# Idempotent: nothing is rebuilt while the binary exists and its stamp (the
# pinned version and the Go version) matches.
set -euo pipefail

GOLANGCI_LINT_VERSION=v2.15.0

root=$(cd "$(dirname "$0")/.." && pwd)
bindir=${COCOON_TOOLS_BIN:-$root/bin/tools}
bin=$bindir/golangci-lint
stamp=$bindir/.golangci-lint-stamp
want="$GOLANGCI_LINT_VERSION $(go env GOVERSION)"

if [[ ! -x $bin || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
	echo "lint: building golangci-lint $GOLANGCI_LINT_VERSION into $bindir" >&2
	mkdir -p "$bindir"
	rm -f "$stamp"
	# GOFLAGS is cleared: the root Makefile exports tags meant for cocoon.
	GOFLAGS= GOBIN=$bindir go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
	printf '%s\n' "$want" >"$stamp"
fi

# The build tag (containers_image_openpgp) comes from .golangci.yml; the e2e
# module is linted from its own directory with the same configuration.
cd "$root"
GOFLAGS= "$bin" run ./...
cd "$root/e2e"
GOFLAGS= "$bin" run ./...
