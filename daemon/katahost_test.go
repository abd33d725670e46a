package daemon

import (
	"context"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cocoon-cc/cocoon/internal/katarules"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// TestKataHostConfig: kata-host serves the snapshots API only and refuses
// the guest's settings, naming the key.
func TestKataHostConfig(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(*Config)
		errKey string
	}{
		{"kata-host", func(*Config) {}, ""},
		{"helper path", func(c *Config) { c.Snapshotter.KataMountType = "fuse./opt/cocoon/bin/nydus-overlayfs-cocoon" }, ""},
		{"bad mount type", func(c *Config) { c.Snapshotter.KataMountType = "fuse.cocoon" }, "snapshotter.kata_mount_type:"},
		{"mount type in guest mode", func(c *Config) { c.Mode = ModeGuest; c.Snapshotter.KataMountType = "fuse.nydus-overlayfs" }, "snapshotter.kata_mount_type:"},
		{"serve cdh", func(c *Config) { c.Serve = []string{ServeCDH} }, "serve:"},
		{"rest", func(c *Config) { c.REST.Address = "127.0.0.1:8006" }, "rest.address:"},
		{"kbs", func(c *Config) { c.Attestation.KBSURL = "http://127.0.0.1:8080" }, "attestation.kbs_url:"},
		{"lazy", func(c *Config) { c.Lazy.Enable = true }, "lazy.enable:"},
		{"nri", func(c *Config) { c.NRI.Enable = true }, "nri.enable:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Default()
			cfg.Mode = ModeKataHost
			c.edit(&cfg)
			err := cfg.Validate()
			if c.errKey == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !cfg.Serves(ServeSnapshotter) || cfg.Serves(ServeREST) || cfg.Serves(ServeCDH) || cfg.Serves(ServeAA) {
					t.Fatal("kata-host serves more than the snapshots API")
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.errKey) {
				t.Fatalf("Validate = %v, want an error naming %s", err, c.errKey)
			}
		})
	}
}

// TestKataHostDaemon runs cocoond in kata-host mode and drives its
// snapshots socket as containerd's proxy plugin does: a labelled layer is
// recorded (ErrAlreadyExists), an unlabelled one refused with the setting
// to fix, and the container rootfs is the Kata guest-pull mount.
func TestKataHostDaemon(t *testing.T) {
	cfg := serveConfig(t)
	cfg.Mode = ModeKataHost
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	checkSnapshotsAPI(t, cfg.Address)
	conn, err := grpc.NewClient("unix://"+cfg.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "cocoon")

	const chain = "sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
	_, err = sn.Prepare(ctx, "extract-1 "+chain, "", snapshots.WithLabels(map[string]string{label.TargetSnapshotRef: chain}))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "disable_snapshot_annotations = false") {
		t.Fatalf("unlabelled layer: %v, want FailedPrecondition naming the containerd setting", err)
	}
	_, err = sn.Prepare(ctx, "extract-2 "+chain, "", snapshots.WithLabels(map[string]string{
		label.TargetSnapshotRef: chain, label.CRIImageRef: "r.example/a:1",
		label.CRIManifestDigest: "sha256:1", label.CRILayerDigest: "sha256:2",
	}))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("labelled layer: %v, want AlreadyExists", err)
	}
	m, err := sn.Prepare(ctx, "ctr", chain)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0].Type != snapshotter.DefaultKataMountType {
		t.Fatalf("rootfs %v", m)
	}
	if err := katarules.All([]katarules.Mount{{Type: m[0].Type, Source: m[0].Source, Options: m[0].Options}}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
