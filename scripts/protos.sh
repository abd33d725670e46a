#!/usr/bin/env bash
# Generates the Go code for protos/ (the CDH and AA ttRPC APIs) into
# kata/api/, and the e2e module's client stubs for the CDH and AA APIs into
# e2e/internal/kataapi/ (protos/buf.gen.e2e.yaml). The generated files are
# committed; run this after editing a .proto file. The tools are pinned below and built from the Go module proxy
# into bin/tools/ (git-ignored) on first use: buf (compiler), protoc-gen-go
# (the google.golang.org/protobuf version go.mod requires) and
# protoc-gen-go-ttrpc (the github.com/containerd/ttrpc version go.mod
# requires).
#
# Idempotent: a tool is rebuilt only when its stamp (pinned version and Go
# version) differs, and generating twice gives the same bytes.
set -euo pipefail

BUF_VERSION=v1.75.0

root=$(cd "$(dirname "$0")/.." && pwd)
bindir=${COCOON_TOOLS_BIN:-$root/bin/tools}
cd "$root"

# The plugin versions follow go.mod, so the generated code matches the
# runtime libraries it is compiled against.
modversion() { GOFLAGS= go list -m -f '{{.Version}}' "$1"; }
PROTOC_GEN_GO_VERSION=$(modversion google.golang.org/protobuf)
TTRPC_VERSION=$(modversion github.com/containerd/ttrpc)

# install NAME PACKAGE VERSION builds PACKAGE@VERSION into bindir unless the
# stamp says it is already there.
install() {
	local name=$1 pkg=$2 version=$3
	local bin=$bindir/$name stamp=$bindir/.$name-stamp
	local want
	want="$version $(go env GOVERSION)"
	if [[ -x $bin && -f $stamp && $(cat "$stamp") == "$want" ]]; then
		return
	fi
	echo "protos: building $name $version into $bindir" >&2
	mkdir -p "$bindir"
	rm -f "$stamp"
	# GOFLAGS is cleared: the root Makefile exports tags meant for cocoon.
	GOFLAGS= GOBIN=$bindir go install "$pkg@$version"
	printf '%s\n' "$want" >"$stamp"
}

install buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-ttrpc github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc "$TTRPC_VERSION"

# The e2e module compiles the client stubs against its own go.mod: its
# protobuf and ttrpc versions must be the ones the plugins come from.
e2eversion() { (cd e2e && GOFLAGS= go list -m -f '{{.Version}}' "$1"); }
for dep in google.golang.org/protobuf:"$PROTOC_GEN_GO_VERSION" github.com/containerd/ttrpc:"$TTRPC_VERSION"; do
	mod=${dep%%:*} want=${dep#*:}
	if [[ $(e2eversion "$mod") != "$want" ]]; then
		echo "protos: e2e/go.mod has $mod $(e2eversion "$mod"), the root module $want; align them" >&2
		exit 1
	fi
done

# Both templates generate into a scratch directory first, so that a failure
# leaves the committed code as it was; then each output directory's
# generated files are replaced (one that no .proto produces any more goes
# away).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
buf() { (cd protos && PATH=$bindir:$PATH "$bindir/buf" generate -o "$tmp" "$@"); }
# cocoon's own code: every .proto, into kata/api.
buf --template buf.gen.yaml
# The end-to-end suite's client stubs (it plays the kata-agent): the CDH and
# AA APIs only, under the e2e module's import paths.
buf --template buf.gen.e2e.yaml --path confidential-data-hub/api.proto --path attestation-agent/attestation-agent.proto
for dir in kata/api e2e/internal/kataapi; do
	find "$dir" -name '*.pb.go' -delete 2>/dev/null || true
	(cd "$tmp" && find "$dir" -name '*.pb.go' -print0) | while IFS= read -r -d '' f; do
		mkdir -p "$(dirname "$f")"
		cp "$tmp/$f" "$f"
	done
	echo "protos: generated $(find "$dir" -name '*.pb.go' | wc -l) files under $dir" >&2
done
