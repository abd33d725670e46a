package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

func init() {
	register(command{
		name:    "containerd-config",
		summary: "print the containerd configuration fragment that enables cocoon",
		run:     runContainerdConfig,
	})
}

// containerdConfigOptions select the fragment printed.
type containerdConfigOptions struct {
	Address        string
	Version        string // "2" or "1.7"
	Name           string // proxy plugin / snapshotter name
	Platform       string
	RuntimeHandler string // scope cocoon to CRI runtime handlers (kata-host: comma-separated, e.g. kata-qemu-tdx)
	Mode           string // "guest" (cocoond pulls) or "kata-host" (the Kata guest pulls)
}

func runContainerdConfig(_ context.Context, args []string) error {
	o, err := parseContainerdConfig(args)
	if err != nil {
		return err
	}
	return writeContainerdConfig(os.Stdout, o)
}

func parseContainerdConfig(args []string) (containerdConfigOptions, error) {
	fs := newFlags("containerd-config")
	o := containerdConfigOptions{}
	fs.StringVar(&o.Address, "address", "/run/cocoon/cocoon.sock", "cocoond's snapshots API `socket`")
	fs.StringVar(&o.Version, "containerd-version", "2", "containerd `version`: 2 (config version 3) or 1.7 (config version 2)")
	fs.StringVar(&o.Name, "name", "cocoon", "snapshotter `name`")
	fs.StringVar(&o.Platform, "platform", "linux/"+runtime.GOARCH, "platform unpacked by the transfer service")
	fs.StringVar(&o.RuntimeHandler, "runtime-handler", "", "use cocoon only for this CRI runtime `handler` (default: for all pods; kata-host: comma-separated list, default "+defaultKataHandler+")")
	fs.StringVar(&o.Mode, "mode", modeGuest, "cocoond's `mode`: guest (cocoond pulls and unpacks) or kata-host (records layers, the Kata guest pulls)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	return o, nil
}

// validate checks the options that end up inside the TOML.
func (o containerdConfigOptions) validate() error {
	if o.Address == "" || !strings.HasPrefix(o.Address, "/") {
		return fmt.Errorf("--address must be an absolute socket path, got %q: %w", o.Address, errUsage)
	}
	if o.Name == "" || strings.ContainsAny(o.Name, "\". \t") {
		return fmt.Errorf("--name %q is not a valid plugin name: %w", o.Name, errUsage)
	}
	handlers := []string{o.RuntimeHandler}
	if o.Mode == modeKataHost {
		handlers = o.kataHandlers()
	}
	for _, h := range handlers {
		for _, r := range h {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("--runtime-handler %q: only letters, digits, '-' and '_' are allowed: %w", o.RuntimeHandler, errUsage)
			}
		}
	}
	return nil
}

func writeContainerdConfig(w io.Writer, o containerdConfigOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	var b strings.Builder
	switch o.Mode {
	case "", modeGuest:
	case modeKataHost:
		if err := writeKataHost(&b, o); err != nil {
			return err
		}
		_, err := io.WriteString(w, b.String())
		return err
	default:
		return fmt.Errorf("--mode %q: want %s or %s: %w", o.Mode, modeGuest, modeKataHost, errUsage)
	}
	switch o.Version {
	case "2", "2.x", "2.0", "2.1", "2.2", "2.3", "2.4":
		writeContainerd2(&b, o)
	case "1.7":
		writeContainerd17(&b, o)
	default:
		return fmt.Errorf("--containerd-version %q: want 2 or 1.7: %w", o.Version, errUsage)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeContainerd2 writes the fragment for containerd 2.x (config version 3).
func writeContainerd2(b *strings.Builder, o containerdConfigOptions) {
	fmt.Fprintf(b, `# cocoon for containerd 2.x (config version = 3): merge into /etc/containerd/config.toml.
# The proxy plugin exports enable_remote_snapshot_annotations so that the
# transfer service (ctr image pull, and CRI on containerd >= 2.1) passes the
# cri.* labels cocoond needs to pull layers itself.
[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]s.exports]
    enable_remote_snapshot_annotations = "true"

# Without an unpack_config entry, "ctr image pull --snapshotter %[1]s" fails
# with "no unpack platforms defined".
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[3]q
  snapshotter = %[1]q
`, o.Name, o.Address, o.Platform)
	if o.RuntimeHandler == "" {
		fmt.Fprintf(b, `
# CRI: pull and run every pod's images through cocoon.
[plugins."io.containerd.cri.v1.images"]
  snapshotter = %[1]q
`, o.Name)
	} else {
		fmt.Fprintf(b, `
# CRI: only pods of runtime handler %[2]q use cocoon (pods must name the
# handler; older 2.x releases need the runtime_platforms entry as well).
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%[2]s]
  snapshotter = %[1]q
[plugins."io.containerd.cri.v1.images".runtime_platforms.%[2]s]
  snapshotter = %[1]q
`, o.Name, o.RuntimeHandler)
	}
}

// writeContainerd17 writes the fragment for containerd 1.7 (config version 2).
func writeContainerd17(b *strings.Builder, o containerdConfigOptions) {
	fmt.Fprintf(b, `# cocoon for containerd 1.7 (config version = 2): merge into /etc/containerd/config.toml.
[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q

# CRI must pass the cri.* snapshot labels (disable_snapshot_annotations = false)
# and keep unpacked layer records.
[plugins."io.containerd.grpc.v1.cri".containerd]
  disable_snapshot_annotations = false
  discard_unpacked_layers = false
`, o.Name, o.Address)
	if o.RuntimeHandler == "" {
		fmt.Fprintf(b, "  snapshotter = %q\n", o.Name)
	} else {
		fmt.Fprintf(b, `
# Only pods of runtime handler %[2]q use cocoon; pods must carry the
# annotation io.containerd.cri.runtime-handler: %[2]s so that PullImage
# uses it too.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%[2]s]
  snapshotter = %[1]q
`, o.Name, o.RuntimeHandler)
	}
}
