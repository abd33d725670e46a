package main

import (
	"fmt"
	"strings"
)

// cocoond's modes as containerd-config names them (daemon.ModeGuest and the
// host mode of issue 14).
const (
	modeGuest    = "guest"
	modeKataHost = "kata-host"
	// defaultKataHandler is the handler kata-deploy installs for
	// confidential pods without TEE hardware (its RuntimeClass of the same
	// name); the TEE ones are kata-qemu-tdx, kata-qemu-snp, ...
	defaultKataHandler = "kata-qemu-coco-dev"
)

// kataHandlers lists the runtime handlers of --runtime-handler (comma
// separated) in kata-host mode; none given means defaultKataHandler.
func (o containerdConfigOptions) kataHandlers() []string {
	if strings.TrimSpace(o.RuntimeHandler) == "" {
		return []string{defaultKataHandler}
	}
	var out []string
	for h := range strings.SplitSeq(o.RuntimeHandler, ",") {
		out = append(out, strings.TrimSpace(h))
	}
	return out
}

// writeKataHost writes the fragment for a Kata host: cocoond --mode
// kata-host records image layers without pulling them and hands the Kata
// runtime a guest-pull volume, so only the pods of Kata runtime handlers may
// use it (a runc pod would get layers nobody unpacked). The keys are the
// ones kata-containers' docs/how-to/how-to-pull-images-in-guest-with-kata.md
// and kata-deploy (tools/packaging/kata-deploy/binary/src/runtime/
// containerd.rs at 7c6ba40c) set for nydus-snapshotter's proxy mode.
func writeKataHost(b *strings.Builder, o containerdConfigOptions) error {
	handlers := o.kataHandlers()
	for _, h := range handlers {
		if h == "" {
			return fmt.Errorf("--runtime-handler %q: empty handler name in the list: %w", o.RuntimeHandler, errUsage)
		}
	}
	switch o.Version {
	case "2", "2.x", "2.0", "2.1", "2.2", "2.3", "2.4":
		writeKataHost2(b, o.Name, o.Address, handlers)
	case "1.7":
		writeKataHost17(b, o.Name, o.Address, handlers)
	default:
		return fmt.Errorf("--containerd-version %q: want 2 or 1.7: %w", o.Version, errUsage)
	}
	return nil
}

// writeKataHost2 writes a drop-in for containerd 2.x. It carries its own
// version line because containerd migrates each imported file from the
// version it declares (cmd/containerd/server/config LoadConfig), and 2.x
// merges an import's plugin tables key by key, so the handlers' other
// settings (runtime_type, options, written by kata-deploy) stay.
func writeKataHost2(b *strings.Builder, name, address string, handlers []string) {
	fmt.Fprintf(b, `# cocoon on a Kata host, containerd 2.x: a drop-in such as
# /etc/containerd/conf.d/cocoon.toml that /etc/containerd/config.toml imports
# (imports = ["/etc/containerd/conf.d/*.toml"], containerd's default).
# cocoond --mode kata-host records image layers without pulling them and gives
# the Kata runtime a guest-pull volume: the guest pulls the image.
version = 3

[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]s.exports]
    enable_remote_snapshot_annotations = "true"

# CRI must pass the cri.* snapshot labels (image reference, layer digest):
# without them cocoond refuses a layer rather than have it pulled on the host.
# With this set, containerd 2.x pulls through CRI's local pull path.
[plugins."io.containerd.cri.v1.images"]
  disable_snapshot_annotations = false
  discard_unpacked_layers = false
`, name, address)
	for _, h := range handlers {
		fmt.Fprintf(b, `
# Pods of runtime handler %[2]q use cocoon. Unless the kubelet passes the
# handler with PullImage (feature gate RuntimeClassInImageCriApi), they need
# the annotation io.containerd.cri.runtime-handler: %[2]s, or the image
# is pulled on the host. runtime_platforms: the images plugin reads only
# this before containerd/containerd#12836 (2026) copied the runtime's.
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%[2]s]
  snapshotter = %[1]q
[plugins."io.containerd.cri.v1.images".runtime_platforms.%[2]s]
  snapshotter = %[1]q
`, name, h)
	}
}

// writeKataHost17 writes the fragment for containerd 1.7. It has to be merged
// into config.toml itself: before 2.0 an import replaces a whole plugin table
// (containerd/containerd#5837; merged key by key since #9982, in 2.0), and
// kata-deploy uses drop-ins only from containerd 2.0 on.
func writeKataHost17(b *strings.Builder, name, address string, handlers []string) {
	fmt.Fprintf(b, `# cocoon on a Kata host, containerd 1.7 (config version = 2): merge into
# /etc/containerd/config.toml (an imported file would replace the whole CRI
# plugin table). cocoond --mode kata-host records image layers without
# pulling them; the Kata guest pulls the image.
[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q

# CRI must pass the cri.* snapshot labels; cocoond refuses a layer without
# them rather than have it pulled on the host.
[plugins."io.containerd.grpc.v1.cri".containerd]
  disable_snapshot_annotations = false
  discard_unpacked_layers = false
`, name, address)
	for _, h := range handlers {
		fmt.Fprintf(b, `
# Pods of runtime handler %[2]q use cocoon. They must carry the annotation
# io.containerd.cri.runtime-handler: %[2]s, or PullImage uses the
# default snapshotter and the image is pulled on the host.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%[2]s]
  snapshotter = %[1]q
`, name, h)
	}
}
