package daemon

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/snapshotter"
)

// validateKataHost refuses, in kata-host mode, settings that belong to the
// guest (the Kata guest pulls, verifies and decrypts images, attests and
// serves the AA/CDH/REST APIs), and kata_mount_type outside it.
func (c *Config) validateKataHost() error {
	if c.Mode != ModeKataHost {
		if c.Snapshotter.KataMountType != "" {
			return fmt.Errorf("snapshotter.kata_mount_type: only used in mode %s", ModeKataHost)
		}
		return nil
	}
	for _, s := range c.Serve {
		if s != ServeSnapshotter {
			return fmt.Errorf("serve: %q is not served in mode %s (the Kata guest runs it); serve only %s", s, ModeKataHost, ServeSnapshotter)
		}
	}
	guestOnly := []struct {
		set bool
		key string
	}{
		{c.REST.Address != "", "rest.address"},
		{c.Attestation.KBSURL != "", "attestation.kbs_url"},
		{c.Attestation.InitData != "", "attestation.initdata"},
		{c.Attestation.AAConfig != "", "attestation.aa_config"},
		{c.Attestation.CDHConfig != "", "attestation.cdh_config"},
		{c.Secrets.Mount != "", "secrets.mount"},
		{len(c.Decryption.PrivateKeyFiles) > 0, "decryption.private_key_files"},
		{c.Lazy.Enable, "lazy.enable"},
		{c.NRI.Enable, "nri.enable"},
	}
	for _, g := range guestOnly {
		if g.set {
			return fmt.Errorf("%s: not used in mode %s, where the Kata guest pulls, verifies and decrypts images; remove it", g.key, ModeKataHost)
		}
	}
	if t := c.Snapshotter.KataMountType; t != "" {
		if err := snapshotter.CheckKataMountType(t); err != nil {
			return fmt.Errorf("snapshotter.kata_mount_type: %w", err)
		}
	}
	return nil
}

// startKataHost opens the snapshotter in kata-host mode: no image
// pipeline; image layers need the CRI labels unless
// allow_unlabelled_layers lets containerd pull them on the host.
func (d *Daemon) startKataHost(ctx context.Context, storage string) (*snapshotter.Snapshotter, error) {
	cfg := d.cfg
	sn, err := snapshotter.New(ctx, snapshotter.Options{
		Root:          filepath.Join(storage, "snapshotter"),
		MountOptions:  cfg.Snapshotter.MountOptions,
		RequireLabels: !cfg.Snapshotter.AllowUnlabelledLayers,
		KataHost:      &snapshotter.KataHostOptions{MountType: cfg.Snapshotter.KataMountType},
	})
	if err != nil {
		return nil, err
	}
	d.onClose(func() { sn.Close() })
	if cfg.Snapshotter.AllowUnlabelledLayers {
		log.G(ctx).Warn("snapshotter.allow_unlabelled_layers: image layers without CRI labels are pulled on the host by containerd")
	}
	log.G(ctx).Info("kata-host mode: image layers are recorded for the Kata guest to pull, not fetched")
	return sn, nil
}
