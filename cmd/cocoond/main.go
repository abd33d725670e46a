// Command cocoond is cocoon's daemon. It serves containerd's snapshots API on
// a unix socket (proxy plugin "cocoon") and pulls, verifies and unpacks image
// layers itself (guest pull); in a Kata guest (--mode kata-guest) it answers
// the kata-agent's Attestation Agent and Confidential Data Hub ttRPC APIs
// instead; on a Kata node's host (--mode kata-host) it records image layers
// without fetching them and hands Kata's runtimes a rootfs mount asking the
// guest to pull the image; it exposes Prometheus metrics on request.
//
// This command only reads flags and the configuration file; package daemon
// does the work.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/daemon"
	lazyserver "github.com/cocoon-cc/cocoon/fusefs/server"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

// version is reported by /info; set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	detached.RunEngineIfRequested()   // the storage volume's engine process
	lazyserver.RunServerIfRequested() // the lazy FUSE server (fusefs/server)
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cocoond:", err)
		os.Exit(1)
	}
}

// stringFlag is a flag that overrides one string of the configuration.
type stringFlag struct {
	name, usage string
	field       func(*daemon.Config) *string
}

var stringFlags = []stringFlag{
	{"root", "state `directory` (default /var/lib/cocoon)", func(c *daemon.Config) *string { return &c.Root }},
	{"address", "unix `socket` serving containerd's snapshots API (default /run/cocoon/cocoon.sock)", func(c *daemon.Config) *string { return &c.Address }},
	{"metrics-address", "serve Prometheus metrics (/metrics) and the readiness and liveness probes (/readyz, /healthz) on `host:port`", func(c *daemon.Config) *string { return &c.MetricsAddress }},
	{"log-level", "log `level`: debug, info, warn, error (default info)", func(c *daemon.Config) *string { return &c.LogLevel }},
	{"log-format", "log format: text or json (default text)", func(c *daemon.Config) *string { return &c.LogFormat }},
	{"rest-api", "serve the guest REST API (/aa, /cdh) on `host:port`, normally 127.0.0.1:8006", func(c *daemon.Config) *string { return &c.REST.Address }},
	{"kbs-url", "Key Broker Service `URL`, e.g. http://127.0.0.1:8080", func(c *daemon.Config) *string { return &c.Attestation.KBSURL }},
	{"tee", "force the attester: sample, tdx, snp or tpm (default: detect)", func(c *daemon.Config) *string { return &c.Attestation.TEE }},
	{"initdata", "init-data TOML `file`; its digest must match the TEE's binding field", func(c *daemon.Config) *string { return &c.Attestation.InitData }},
	{"aa-config", "upstream aa.toml `file` (default: from init-data)", func(c *daemon.Config) *string { return &c.Attestation.AAConfig }},
	{"cdh-config", "upstream cdh.toml `file` (default: from init-data)", func(c *daemon.Config) *string { return &c.Attestation.CDHConfig }},
	{"storage-volume", "put image storage on an encrypted volume on this block device or `file` (key and header in memory only)", func(c *daemon.Config) *string { return &c.Storage.Volume }},
	{"secrets-mount", "mount the secrets filesystem (sealed secrets, KBS resources) on `dir`", func(c *daemon.Config) *string { return &c.Secrets.Mount }},
	{"mode", "guest (containerd in the guest; default), kata-guest (the kata-agent's AA and CDH ttRPC services, then the REST API) or kata-host (a Kata node's snapshots API: layers recorded, the guest pulls)", func(c *daemon.Config) *string { return &c.Mode }},
	{"cdh-socket", "Confidential Data Hub ttRPC `uri` (default: cdh.toml's socket, else unix:///run/confidential-containers/cdh.sock)", func(c *daemon.Config) *string { return &c.Kata.CDHSocket }},
	{"aa-socket", "Attestation Agent ttRPC `uri` (default: cdh.toml's [aa] aa_socket, else upstream's)", func(c *daemon.Config) *string { return &c.Kata.AASocket }},
}

// flags is the command line; empty values leave the config file's.
type flags struct {
	configPath, restFeatures, cmdline string
	strings                           map[string]*string // by stringFlags name
	secretsSrc, insecure, serve       flagutil.StringList
	storageSize                       flagutil.Size
}

func parseFlags(args []string) (*flags, error) {
	fs := flag.NewFlagSet("cocoond", flag.ContinueOnError)
	f := &flags{strings: map[string]*string{}}
	fs.StringVar(&f.configPath, "config", "", "cocoond TOML configuration `file`")
	for _, sf := range stringFlags {
		f.strings[sf.name] = fs.String(sf.name, "", sf.usage)
	}
	fs.StringVar(&f.restFeatures, "rest-features", "", "REST API features: all, attestation or resource (default resource, or the kernel command line's "+daemon.KernelCmdlineKey+")")
	fs.Var(&f.storageSize, "storage-volume-size", "`size` of a file --storage-volume, e.g. 20G ("+flagutil.SizeSyntax+")")
	fs.StringVar(&f.cmdline, "kernel-cmdline", "/proc/cmdline", "kernel command line `file` read for "+daemon.KernelCmdlineKey)
	fs.Var(&f.insecure, "insecure-registry", "plain-HTTP registry `host:port` (repeatable)")
	fs.Var(&f.serve, "serve", "`services` to serve, overriding the mode's: snapshotter, aa, cdh, rest (comma-separated or repeated)")
	fs.Var(&f.secretsSrc, "secrets-source", "`NAME=SRCDIR`: the secrets mount's NAME/ mirrors SRCDIR, unsealing sealed secrets (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return f, nil
}

// apply lays the flags given over cfg (read from the config file).
func (f *flags) apply(cfg *daemon.Config) {
	for _, sf := range stringFlags {
		if v := *f.strings[sf.name]; v != "" {
			*sf.field(cfg) = v
		}
	}
	if f.storageSize > 0 {
		cfg.Storage.Size = f.storageSize.String()
	}
	cfg.Secrets.Sources = append(cfg.Secrets.Sources, f.secretsSrc...)
	cfg.Registry.Insecure = append(cfg.Registry.Insecure, f.insecure...)
	if len(f.serve) > 0 {
		cfg.Serve = nil
		for _, s := range f.serve {
			cfg.Serve = append(cfg.Serve, strings.Split(s, ",")...)
		}
	}
}

func setupLogging(cfg daemon.Config) error {
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log level: %w", err)
	}
	if cfg.LogFormat == "json" {
		return log.SetFormat(log.JSONFormat)
	}
	return nil
}

func run(args []string) error {
	f, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg, warnings, err := daemon.Load(f.configPath)
	if err != nil {
		return err
	}
	f.apply(&cfg)
	cfg.Version = version
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := setupLogging(cfg); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for _, w := range warnings {
		log.G(ctx).Warn(w)
	}
	features, source, err := daemon.RESTFeatures(f.restFeatures, f.cmdline, cfg.REST.Features)
	if err != nil {
		return fmt.Errorf("rest features (from %s): %w", source, err)
	}
	cfg.REST.Features = string(features)
	return daemon.Serve(ctx, cfg)
}
