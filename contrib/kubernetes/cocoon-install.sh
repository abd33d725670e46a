#!/usr/bin/env bash
# cocoon-install.sh: install cocoond in kata-host mode on a Kubernetes node,
# or remove it again. The DaemonSet in this directory runs it in a privileged
# container ("run": install, then wait; its preStop hook runs "uninstall").
#
#   cocoon-install.sh install | uninstall | run
#
# install:
#   - copies the binaries of $COCOON_ARTIFACTS/bin to $COCOON_PREFIX/bin;
#   - writes /etc/cocoon/cocoond.toml and /etc/systemd/system/cocoond.service
#     (contrib/kata-host, with /usr/local/bin/ replaced by $COCOON_PREFIX/bin/)
#     and starts cocoond;
#   - writes the containerd drop-in /etc/containerd/conf.d/cocoon.toml
#     (cocoonctl containerd-config --mode kata-host), makes
#     /etc/containerd/config.toml import it when it does not import conf.d
#     already (kata-deploy's approach), and restarts containerd.
# Running it again changes nothing and restarts nothing when nothing changed.
# Only containerd 2.x is handled: 1.7 would need the fragment merged into
# config.toml itself (cocoonctl containerd-config --mode kata-host
# --containerd-version 1.7).
#
# Environment (defaults are the DaemonSet's):
#   COCOON_HOST_ROOT           the host's / as mounted here (/host)
#   COCOON_ARTIFACTS           the image's payload (/opt/cocoon-artifacts)
#   COCOON_PREFIX              install prefix on the host (/opt/cocoon)
#   COCOON_RUNTIME_HANDLERS    Kata runtime handlers using cocoon, comma separated
#                              (kata-qemu-coco-dev)
#   COCOON_CONFIG_FILE         cocoond.toml to install ($COCOON_ARTIFACTS/kata-host/cocoond.toml)
#   COCOON_HOST_EXEC           runs a command on the host
#                              ("nsenter --target 1 --mount --uts --ipc --net --pid --")
#   COCOON_CONTAINERD_VERSION  skip asking the host's containerd --version
set -euo pipefail

HOST_ROOT=${COCOON_HOST_ROOT:-/host}
ARTIFACTS=${COCOON_ARTIFACTS:-/opt/cocoon-artifacts}
PREFIX=${COCOON_PREFIX:-/opt/cocoon}
HANDLERS=${COCOON_RUNTIME_HANDLERS:-kata-qemu-coco-dev}
CONFIG_SRC=${COCOON_CONFIG_FILE:-$ARTIFACTS/kata-host/cocoond.toml}
read -r -a HOST_EXEC <<<"${COCOON_HOST_EXEC:-nsenter --target 1 --mount --uts --ipc --net --pid --}"

# Paths on the host (the DaemonSet mounts each directory).
CONTAINERD_CONFIG=/etc/containerd/config.toml
DROPIN=/etc/containerd/conf.d/cocoon.toml
CONFD_GLOB=/etc/containerd/conf.d/*.toml
UNIT=/etc/systemd/system/cocoond.service
CONFIG=/etc/cocoon/cocoond.toml
# The imports line added to a config.toml that has none (removed on uninstall).
IMPORT_LINE="imports = [\"$DROPIN\"] # added by cocoon-install.sh"
# Marks a config.toml this script created (removed on uninstall).
CREATED_MARK=$CONTAINERD_CONFIG.cocoon-created

log() { echo "cocoon-install: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}
host() { "${HOST_EXEC[@]}" "$@"; }

# put SRC DST MODE: install SRC as $HOST_ROOT/DST unless it already has that
# content and mode; prints "changed" when it wrote.
put() {
	local src=$1 dst=$HOST_ROOT$2 mode=$3
	if [[ -f $dst ]] && cmp -s "$src" "$dst" && [[ $(stat -c %a "$dst") == "$mode" ]]; then
		return 0
	fi
	mkdir -p "$(dirname "$dst")"
	install -m "$mode" "$src" "$dst.cocoon-tmp"
	mv -f "$dst.cocoon-tmp" "$dst"
	log "wrote $2"
	echo changed
}

# containerd_major prints the major version of the host's containerd.
containerd_major() {
	local v=${COCOON_CONTAINERD_VERSION:-}
	if [[ -z $v ]]; then
		# "containerd github.com/containerd/containerd/v2 v2.1.4 <commit>"
		v=$(host containerd --version | awk '{print $3}') || die "cannot run containerd --version on the host (set COCOON_CONTAINERD_VERSION)"
	fi
	v=${v#v}
	[[ $v =~ ^[0-9]+ ]] || die "cannot read containerd's version from \"$v\" (set COCOON_CONTAINERD_VERSION)"
	echo "${BASH_REMATCH[0]}"
}

# check_import fails, before anything is written, on a config.toml whose
# imports this script cannot edit.
check_import() {
	local conf=$HOST_ROOT$CONTAINERD_CONFIG
	[[ -e $conf ]] || return 0
	grep -qF -e "\"$CONFD_GLOB\"" -e "\"$DROPIN\"" "$conf" && return 0
	if grep -qE '^[[:space:]]*imports[[:space:]]*=' "$conf" &&
		! grep -qE '^[[:space:]]*imports[[:space:]]*=[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$' "$conf"; then
		die "$CONTAINERD_CONFIG spreads imports over several lines: add \"$DROPIN\" to it by hand and rerun"
	fi
}

created_config() { printf 'version = 3\nimports = ["%s"]\n' "$CONFD_GLOB"; }

# ensure_import makes config.toml import the drop-in; prints "changed" when it
# edited or created the file.
ensure_import() {
	local conf=$HOST_ROOT$CONTAINERD_CONFIG
	if [[ ! -e $conf ]]; then
		# Without a config file containerd reads no imports at all.
		mkdir -p "$(dirname "$conf")"
		created_config >"$conf"
		: >"$HOST_ROOT$CREATED_MARK"
		log "created $CONTAINERD_CONFIG importing $CONFD_GLOB"
		echo changed
	elif grep -qF -e "\"$CONFD_GLOB\"" -e "\"$DROPIN\"" "$conf"; then
		return 0
	elif grep -qE '^[[:space:]]*imports[[:space:]]*=[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$' "$conf"; then
		sed -i -E \
			-e "s|^([[:space:]]*imports[[:space:]]*=[[:space:]]*\[)[[:space:]]*\]|\1\"$DROPIN\"]|" \
			-e "t" \
			-e "s|^([[:space:]]*imports[[:space:]]*=[[:space:]]*\[[^]]*[^][:space:]])[[:space:]]*\]|\1, \"$DROPIN\"]|" \
			"$conf"
		log "added $DROPIN to imports in $CONTAINERD_CONFIG"
		echo changed
	else
		# Top-level keys must precede the first table: the first line does.
		sed -i "1i $IMPORT_LINE" "$conf"
		[[ -s $conf ]] || echo "$IMPORT_LINE" >"$conf"
		log "added imports of $DROPIN to $CONTAINERD_CONFIG"
		echo changed
	fi
}

# remove_import undoes ensure_import; prints "changed" when it did anything.
remove_import() {
	local conf=$HOST_ROOT$CONTAINERD_CONFIG
	[[ -e $conf ]] || return 0
	if [[ -e $HOST_ROOT$CREATED_MARK ]]; then
		# Ours unless someone edited it since (then it stays: it only
		# imports conf.d).
		rm -f "$HOST_ROOT$CREATED_MARK"
		if [[ $(cat "$conf") == "$(created_config)" ]]; then
			rm -f "$conf"
			echo changed
		fi
		return 0
	fi
	grep -qF "\"$DROPIN\"" "$conf" || return 0
	local kept
	kept=$(grep -vxF "$IMPORT_LINE" "$conf" || true)
	printf '%s\n' "$kept" | sed -E \
		-e "s|, \"$DROPIN\"\]|]|" \
		-e "s|\[\"$DROPIN\"\]|[]|" >"$conf.cocoon-tmp"
	cat "$conf.cocoon-tmp" >"$conf"
	rm -f "$conf.cocoon-tmp"
	log "removed $DROPIN from imports in $CONTAINERD_CONFIG"
	echo changed
}

do_install() {
	[[ -d $HOST_ROOT ]] || die "COCOON_HOST_ROOT $HOST_ROOT is not a directory"
	[[ -x $ARTIFACTS/bin/cocoond && -x $ARTIFACTS/bin/cocoonctl ]] || die "no cocoond and cocoonctl in $ARTIFACTS/bin"
	local major
	major=$(containerd_major)
	((major >= 2)) || die "containerd $major.x: only containerd 2.x takes cocoon's drop-in; merge \`cocoonctl containerd-config --mode kata-host --containerd-version 1.7\` into $CONTAINERD_CONFIG by hand"
	check_import

	local tmp svc="" ctd="" f address
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	for f in "$ARTIFACTS"/bin/*; do
		svc+=$(put "$f" "$PREFIX/bin/$(basename "$f")" 755)
	done
	# The unit and config name /usr/local/bin/ (a manual install); here the
	# binaries are in $PREFIX/bin.
	sed "s|/usr/local/bin/|$PREFIX/bin/|g" "$CONFIG_SRC" >"$tmp/config"
	svc+=$(put "$tmp/config" "$CONFIG" 644)
	sed "s|/usr/local/bin/|$PREFIX/bin/|g" "$ARTIFACTS/kata-host/cocoond.service" >"$tmp/unit"
	svc+=$(put "$tmp/unit" "$UNIT" 644)

	address=$(sed -n -E 's/^address[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$tmp/config")
	"$ARTIFACTS/bin/cocoonctl" containerd-config --mode kata-host \
		--runtime-handler "$HANDLERS" --address "${address:-/run/cocoon/cocoon.sock}" >"$tmp/dropin"
	ctd+=$(put "$tmp/dropin" "$DROPIN" 644)
	ctd+=$(ensure_import)

	if [[ -n $svc ]]; then
		host systemctl daemon-reload
		host systemctl enable cocoond.service
		host systemctl restart cocoond.service
	else
		host systemctl enable --now cocoond.service
	fi
	if [[ -n $ctd ]]; then
		host systemctl restart containerd.service
	fi
	log "installed (runtime handlers: $HANDLERS)"
}

do_uninstall() {
	local ctd="" f
	if [[ -e $HOST_ROOT$DROPIN ]]; then
		rm -f "$HOST_ROOT$DROPIN"
		ctd=changed
	fi
	ctd+=$(remove_import)
	if [[ -n $ctd ]]; then
		host systemctl restart containerd.service
	fi
	if [[ -e $HOST_ROOT$UNIT ]]; then
		host systemctl disable --now cocoond.service || log "could not stop cocoond.service"
		rm -f "$HOST_ROOT$UNIT"
		host systemctl daemon-reload
	fi
	rm -f "$HOST_ROOT$CONFIG"
	for f in "$ARTIFACTS"/bin/*; do
		rm -f "$HOST_ROOT$PREFIX/bin/$(basename "$f")"
	done
	rmdir "$HOST_ROOT$PREFIX/bin" "$HOST_ROOT$PREFIX" "$(dirname "$HOST_ROOT$CONFIG")" 2>/dev/null || true
	log "uninstalled (state in /var/lib/cocoon kept)"
}

case ${1:-} in
install) do_install ;;
uninstall) do_uninstall ;;
run)
	do_install
	trap 'exit 0' TERM INT
	sleep infinity &
	wait
	;;
*) die "usage: $0 install|uninstall|run" ;;
esac
