package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/kata/aa"
	"github.com/cocoon-cc/cocoon/kata/bundle"
	"github.com/cocoon-cc/cocoon/kata/cdh"
	"github.com/cocoon-cc/cocoon/kata/securemount"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

// Modes select what cocoond serves by default (Config.Mode).
const (
	// ModeGuest is a confidential VM running containerd: the snapshots API
	// (and the REST shim when rest.address is set).
	ModeGuest = "guest"
	// ModeKataGuest is a Kata confidential guest, where the kata-agent pulls
	// images and mounts protected storage itself: the Attestation Agent and
	// Confidential Data Hub ttRPC services, then the REST shim, as
	// guest-components' attestation-agent, confidential-data-hub and
	// api-server-rest would; no containerd, no snapshots socket.
	ModeKataGuest = "kata-guest"
	// ModeKataHost is a Kata node's host: the snapshots API only, recording
	// image layers without pulling them and handing Kata's runtimes a rootfs
	// mount that asks the guest to pull the image (see
	// snapshotter.KataHostOptions); no image pipeline, no KBS.
	ModeKataHost = "kata-host"
)

// Services cocoond can serve (Config.Serve).
const (
	ServeSnapshotter = "snapshotter"
	ServeAA          = "aa"
	ServeCDH         = "cdh"
	ServeREST        = "rest"
)

// DefaultRESTAddress is api-server-rest's address, used when the REST
// shim is served without rest.address.
const DefaultRESTAddress = "127.0.0.1:8006"

// KataConfig places the kata-agent's ttRPC services.
type KataConfig struct {
	// CDHSocket and AASocket are unix:// URIs. Empty: cdh.toml's socket
	// and [aa] aa_socket, else upstream's defaults
	// (unix:///run/confidential-containers/cdh.sock and
	// unix:///run/confidential-containers/attestation-agent/attestation-agent.sock).
	CDHSocket string `toml:"cdh_socket"`
	AASocket  string `toml:"aa_socket"`
}

// services is the set cocoond serves: Serve when given, else the mode's.
func (c *Config) services() map[string]bool {
	list := c.Serve
	if len(list) == 0 {
		switch c.Mode {
		case ModeKataGuest:
			list = []string{ServeAA, ServeCDH, ServeREST}
		default:
			list = []string{ServeSnapshotter}
			if c.REST.Address != "" {
				list = append(list, ServeREST)
			}
		}
	}
	set := map[string]bool{}
	for _, s := range list {
		set[s] = true
	}
	return set
}

// Serves reports whether cocoond serves service (one of the Serve* names).
func (c *Config) Serves(service string) bool { return c.services()[service] }

// validateServices checks mode, serve and the kata sockets.
func (c *Config) validateServices() error {
	switch c.Mode {
	case "", ModeGuest, ModeKataGuest, ModeKataHost:
	default:
		return fmt.Errorf("mode: %q is not %s, %s or %s", c.Mode, ModeGuest, ModeKataGuest, ModeKataHost)
	}
	if err := c.validateKataHost(); err != nil {
		return err
	}
	known := []string{ServeSnapshotter, ServeAA, ServeCDH, ServeREST}
	seen := map[string]bool{}
	for _, s := range c.Serve {
		if !slices.Contains(known, s) {
			return fmt.Errorf("serve: %q is not one of %s", s, strings.Join(known, ", "))
		}
		if seen[s] {
			return fmt.Errorf("serve: %q listed twice", s)
		}
		seen[s] = true
	}
	if len(c.Serve) > 0 && len(seen) == 0 {
		return fmt.Errorf("serve: nothing to serve")
	}
	if c.Serves(ServeSnapshotter) && c.Address == "" {
		return fmt.Errorf("address: must not be empty when the snapshotter is served")
	}
	for key, uri := range map[string]string{"kata.cdh_socket": c.Kata.CDHSocket, "kata.aa_socket": c.Kata.AASocket} {
		if uri == "" {
			continue
		}
		if _, err := ttrpcsock.SocketPath(uri); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	return nil
}

// socketURI picks a ttRPC socket: cocoond's setting, cdh.toml's, upstream's.
func socketURI(own string, fromCDH func(*config.CDHConfig) string, cdhCfg *config.CDHConfig, def string) string {
	switch {
	case own != "":
		return own
	case cdhCfg != nil && fromCDH(cdhCfg) != "":
		return fromCDH(cdhCfg)
	}
	return def
}

// sharedAgent is the one Attestation Agent the AA ttRPC service and the
// REST shim both call.
func (d *Daemon) sharedAgent() (*agent.Agent, error) {
	if d.agent != nil {
		return d.agent, nil
	}
	ag, err := d.at.agent()
	if err != nil {
		return nil, err
	}
	d.agent = ag
	return ag, nil
}

// startAA serves the Attestation Agent's ttRPC API until Close.
func (d *Daemon) startAA(ctx context.Context) error {
	ag, err := d.sharedAgent()
	if err != nil {
		return err
	}
	uri := socketURI(d.cfg.Kata.AASocket, func(c *config.CDHConfig) string { return c.AA.AASocket }, d.at.cdh, aa.DefaultSocket)
	if err := d.serveTTRPC(ctx, "attestation agent", uri, aa.New(ag).Register); err != nil {
		return err
	}
	log.G(ctx).WithFields(log.Fields{"socket": uri, "tee": d.at.attester.TEE()}).Info("serving the Attestation Agent ttRPC API")
	return nil
}

// serveTTRPC serves register's services on the unix:// socket uri until
// Close.
func (d *Daemon) serveTTRPC(ctx context.Context, what, uri string, register func(*ttrpc.Server)) error {
	srv, err := ttrpcsock.Listen(ctx, uri, register)
	if err != nil {
		return fmt.Errorf("%s ttRPC socket: %w", what, err)
	}
	d.onClose(func() {
		if err := srv.Close(); err != nil {
			log.G(ctx).WithError(err).Warnf("close the %s ttRPC socket", what)
		}
	})
	d.kataSockets = append(d.kataSockets, uri)
	return nil
}

// startCDH serves the Confidential Data Hub's ttRPC API until Close:
// sealed secrets and KBS resources as the secrets filesystem resolves
// them, layer keys for ocicrypt, PullImage through the snapshotter's
// pipeline into bundles, SecureMount of block devices on cryptvol.
func (d *Daemon) startCDH(ctx context.Context, sn *snapshotter.Snapshotter, deps pipelineDeps) error {
	images, err := bundle.New(bundle.Options{Snapshotter: sn, Registry: deps.client})
	if err != nil {
		return err
	}
	if err := images.Prune(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("remove the snapshots of bundles left unmounted")
	}
	unsealer := d.at.unsealer(d.cfg.Secrets.LocalKeyDir)
	mounter := securemount.New(securemount.Options{
		Unsealer:   unsealer,
		Resources:  d.at.resources(),
		Engine:     cryptvol.EngineAuto,
		RuntimeDir: filepath.Join(d.root, "securemount"),
	})
	d.onClose(func() {
		if err := mounter.Close(context.WithoutCancel(ctx)); err != nil {
			log.G(ctx).WithError(err).Warn("release secure mounts")
		}
	})
	svc := cdh.New(cdh.Options{Unsealer: unsealer, Resources: d.at.resources(), Images: images, Mounter: mounter})
	uri := socketURI(d.cfg.Kata.CDHSocket, func(c *config.CDHConfig) string { return c.Socket }, d.at.cdh, cdh.DefaultSocket)
	if err := d.serveTTRPC(ctx, "confidential data hub", uri, svc.Register); err != nil {
		return err
	}
	log.G(ctx).WithField("socket", uri).Info("serving the Confidential Data Hub ttRPC API (UnsealSecret, GetResource, UnWrapKey, SecureMount, PullImage)")
	return nil
}
