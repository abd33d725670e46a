#!/usr/bin/env bash
# Installs and builds everything the end-to-end suite (e2e/), `make demo` and
# `make bench` run besides cocoon's own binaries.
#
# Go tools are pinned by e2e/go.mod `tool` directives (add one with
# `cd e2e && GOFLAGS= go get -tool PKG@VERSION`) and built into bin/e2e/ from
# inside e2e/, so the versions come from e2e/go.mod and e2e/go.sum. Debian
# packages are installed with apt only when missing.
#
# Idempotent: when every binary exists and the stamp (a hash of e2e/go.mod,
# e2e/go.sum, the Go version and the tool table below) matches, nothing is
# rebuilt, and apt is not touched when every package is present.
#
# Adding a tool is one line in GO_TOOLS or APT_TOOLS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bindir=${COCOON_E2E_BIN:-$root/bin/e2e}
stamp=$bindir/.tools-stamp

# Go tools: "binary  package  build-tags (comma separated, or -)".
# Every package here must also be a `tool` directive in e2e/go.mod.
GO_TOOLS=(
	"containerd              github.com/containerd/containerd/v2/cmd/containerd              no_btrfs,no_devmapper,no_zfs"
	"ctr                     github.com/containerd/containerd/v2/cmd/ctr                     no_btrfs,no_devmapper,no_zfs"
	"containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 no_btrfs,no_devmapper,no_zfs"
	"crane                   github.com/google/go-containerregistry/cmd/crane                -"
	"cosign                  github.com/sigstore/cosign/v2/cmd/cosign                        -"
	"cosign3                 github.com/sigstore/cosign/v3/cmd/cosign                        -"
	"crictl                  sigs.k8s.io/cri-tools/cmd/crictl                                -"
)

# Debian packages: "file-that-proves-it-is-installed  package".
APT_TOOLS=(
	"/usr/sbin/runc    runc"
	"/bin/busybox      busybox-static"
	"/usr/bin/wrk      wrk"
	"/usr/bin/skopeo   skopeo"
	"/usr/bin/gpg      gnupg"
)

log() { printf 'e2e-tools: %s\n' "$*" >&2; }

install_apt_tools() {
	local missing=() line file pkg
	for line in "${APT_TOOLS[@]}"; do
		read -r file pkg <<<"$line"
		if [[ ! -e $file ]]; then
			missing+=("$pkg")
		fi
	done
	if ((${#missing[@]} == 0)); then
		return 0
	fi
	if ((EUID != 0)); then
		log "missing Debian packages (${missing[*]}) and not root: install them with apt-get"
		exit 1
	fi
	log "installing ${missing[*]} with apt"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	for line in "${APT_TOOLS[@]}"; do
		read -r file pkg <<<"$line"
		if [[ ! -e $file ]]; then
			log "package $pkg installed but $file is still missing"
			exit 1
		fi
	done
}

tools_hash() {
	{
		cat "$root/e2e/go.mod" "$root/e2e/go.sum"
		go version
		printf '%s\n' "${GO_TOOLS[@]}"
	} | sha256sum | cut -d' ' -f1
}

build_go_tools() {
	local want line name pkg tags missing=0
	want=$(tools_hash)
	for line in "${GO_TOOLS[@]}"; do
		read -r name pkg tags <<<"$line"
		[[ -x $bindir/$name ]] || missing=1
	done
	if ((missing == 0)) && [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
		log "Go tools up to date in $bindir"
		return 0
	fi
	mkdir -p "$bindir"
	rm -f "$stamp"
	for line in "${GO_TOOLS[@]}"; do
		read -r name pkg tags <<<"$line"
		[[ $tags == - ]] && tags=
		log "building $name ($pkg)"
		# GOFLAGS is cleared: the root Makefile exports tags meant for the
		# main module only. -mod=readonly: versions come from e2e/go.mod.
		(cd "$root/e2e" && GOFLAGS= CGO_ENABLED=0 go build -mod=readonly -trimpath \
			-tags "$tags" -o "$bindir/$name" "$pkg")
	done
	printf '%s\n' "$want" >"$stamp"
}

install_apt_tools
build_go_tools
