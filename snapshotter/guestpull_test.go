package snapshotter_test

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/regtest"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
	"github.com/cocoon-cc/cocoon/snapshotter/pullsource"
)

type fixture struct {
	sn     *snapshotter.Snapshotter
	puller *pull.Puller
	root   string
	reg    *regtest.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg := regtest.Start(t)
	root := t.TempDir()
	f := &fixture{root: root, reg: reg}
	f.open(t)
	return f
}

func (f *fixture) open(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	client := registry.New(registry.Options{Insecure: []string{f.reg.Host}, Retries: 1})
	p, err := pull.New(pull.Options{Registry: client, StagingDir: filepath.Join(f.root, "staging")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CleanStaging(ctx); err != nil {
		t.Fatal(err)
	}
	sn, err := snapshotter.New(ctx, snapshotter.Options{Root: filepath.Join(f.root, "sn"), Layers: pullsource.New(p)})
	if err != nil {
		t.Fatal(err)
	}
	f.sn, f.puller = sn, p
	t.Cleanup(f.close)
}

func (f *fixture) close() {
	if f.sn != nil {
		f.puller.Close()
		f.sn.Close()
		f.sn = nil
	}
}

// unpack drives the snapshotter as containerd's unpacker does: one Prepare
// per layer with the target labels, expecting ErrAlreadyExists.
func (f *fixture) unpack(t *testing.T, ref string, img v1.Image) ([]digest.Digest, error) {
	t.Helper()
	ctx := context.Background()
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var diffIDs []digest.Digest
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs = append(diffIDs, digest.Digest(d.String()))
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	for i, l := range m.Layers {
		labels := map[string]string{
			label.TargetSnapshotRef: chain[i].String(),
			label.DiffID:            diffIDs[i].String(),
			label.CRIImageRef:       ref,
			label.CRIManifestDigest: md.String(),
			label.CRILayerDigest:    l.Digest.String(),
		}
		parent := ""
		if i > 0 {
			parent = chain[i-1].String()
			labels[label.ParentChainID] = parent
		}
		key := fmt.Sprintf("extract-%d %s", i, chain[i])
		_, err := f.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
		if !errdefs.IsAlreadyExists(err) {
			return chain, fmt.Errorf("layer %d: %w", i, err)
		}
		if _, err := f.sn.Stat(ctx, chain[i].String()); err != nil {
			return chain, fmt.Errorf("layer %d reported AlreadyExists but: %w", i, err)
		}
	}
	return chain, nil
}

// rootfs mounts a container snapshot over top and returns its path.
func (f *fixture) rootfs(t *testing.T, key string, top digest.Digest) string {
	t.Helper()
	ctx := context.Background()
	mounts, err := f.sn.Prepare(ctx, key, top.String())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Error(err)
		}
	})
	return dir
}

func TestGuestPull(t *testing.T) {
	for _, tc := range []struct {
		name string
		comp compression.Compression
		oci  bool
	}{
		{"docker-gzip", compression.GZip, false},
		{"oci-gzip", compression.GZip, true},
		{"oci-zstd", compression.ZStd, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			l1 := regtest.Tar(t,
				regtest.Entry{Name: "etc/", Type: tar.TypeDir},
				regtest.Entry{Name: "etc/os-release", Body: "cocoon-test\n"},
				regtest.Entry{Name: "gone", Body: "lower\n"},
				regtest.Entry{Name: "opaque/", Type: tar.TypeDir},
				regtest.Entry{Name: "opaque/old", Body: "old\n"},
				regtest.Entry{Name: "bin/", Type: tar.TypeDir},
				regtest.Entry{Name: "bin/sh-link", Type: tar.TypeSymlink, Link: "/etc/os-release"},
			)
			l2 := regtest.Tar(t,
				regtest.Entry{Name: "hello", Body: "hello from layer 2\n"},
				regtest.Entry{Name: ".wh.gone"},
				regtest.Entry{Name: "opaque/", Type: tar.TypeDir},
				regtest.Entry{Name: "opaque/.wh..wh..opq"},
				regtest.Entry{Name: "opaque/new", Body: "new\n"},
			)
			ref, img := f.reg.Push(t, "test/"+tc.name, tc.comp, tc.oci, l1, l2)
			chain, err := f.unpack(t, ref, img)
			if err != nil {
				t.Fatal(err)
			}
			info, err := f.sn.Stat(context.Background(), chain[1].String())
			if err != nil {
				t.Fatal(err)
			}
			if info.Kind != snapshots.KindCommitted || info.Parent != chain[0].String() || info.Labels[label.GuestPulled] == "" {
				t.Fatalf("committed snapshot info = %+v", info)
			}
			if _, ok := info.Labels[label.OverlayUpperdir]; ok {
				t.Fatalf("the upperdir label, cocoond's own business, reached a client: %+v", info)
			}
			root := f.rootfs(t, "container", chain[1])
			for path, want := range map[string]string{
				"hello":          "hello from layer 2\n",
				"etc/os-release": "cocoon-test\n",
				"opaque/new":     "new\n",
			} {
				got, err := os.ReadFile(filepath.Join(root, path))
				if err != nil || string(got) != want {
					t.Errorf("%s = %q, %v; want %q", path, got, err, want)
				}
			}
			for _, path := range []string{"gone", "opaque/old"} {
				if _, err := os.Lstat(filepath.Join(root, path)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s should be hidden by a whiteout, got %v", path, err)
				}
			}
			if l, err := os.Readlink(filepath.Join(root, "bin/sh-link")); err != nil || l != "/etc/os-release" {
				t.Errorf("symlink = %q, %v", l, err)
			}
			// A second pull of the same image finds every layer committed and
			// fetches no blob.
			before := f.reg.Gets.Load()
			if _, err := f.unpack(t, ref, img); err != nil {
				t.Fatal(err)
			}
			if n := f.reg.Gets.Load() - before; n != 0 {
				t.Errorf("second pull fetched %d blobs", n)
			}
			assertNoStaging(t, f)
		})
	}
}

func assertNoStaging(t *testing.T, f *fixture) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(f.root, "staging"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("staging directory not empty: %v", entries)
	}
	if err := f.sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && info.Labels[label.Staging] == "true" {
			t.Errorf("staging snapshot %q left behind", info.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func countCommitted(t *testing.T, sn snapshots.Snapshotter) int {
	n := 0
	if err := sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindCommitted {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestGuestPullRefusesBadLayers(t *testing.T) {
	good := regtest.Tar(t, regtest.Entry{Name: "ok", Body: "fine\n"})
	for _, tc := range []struct {
		name    string
		layer   []byte
		tamper  bool
		wantErr string
	}{
		{"tampered blob", regtest.Tar(t, regtest.Entry{Name: "data", Body: strings.Repeat("cocoon ", 4096)}), true, "digest mismatch"},
		{"path traversal", regtest.Tar(t, regtest.Entry{Name: "../escape", Body: "x"}), false, `"../escape"`},
		{"absolute path", regtest.Tar(t, regtest.Entry{Name: "/etc/evil", Body: "x"}), false, `"/etc/evil"`},
		{"symlink escape", regtest.Tar(t,
			regtest.Entry{Name: "link", Type: tar.TypeSymlink, Link: "../../../../../../tmp"},
			regtest.Entry{Name: "link/evil", Body: "x"}), false, `"link/evil"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ref, img := f.reg.Push(t, "test/bad", compression.GZip, true, good, tc.layer)
			if tc.tamper {
				m, _ := img.Manifest()
				f.reg.Tamper.Store(m.Layers[1].Digest.Hex)
			}
			chain, err := f.unpack(t, ref, img)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one containing %s", err, tc.wantErr)
			}
			if _, err := f.sn.Stat(context.Background(), chain[1].String()); !errdefs.IsNotFound(err) {
				t.Errorf("bad layer committed: %v", err)
			}
			if n := countCommitted(t, f.sn); n != 1 {
				t.Errorf("%d committed snapshots, want only the good first layer", n)
			}
			assertNoStaging(t, f)
		})
	}
}

// TestNoLabelsFallsBackToContainerdApply: without RequireLabels (no policy,
// or allow_unlabelled_layers) containerd applies an unlabelled layer.
func TestNoLabelsFallsBackToContainerdApply(t *testing.T) {
	f := newFixture(t)
	mounts, err := f.sn.Prepare(context.Background(), "extract-1 sha256:abc", "",
		snapshots.WithLabels(map[string]string{label.TargetSnapshotRef: "sha256:abc"}))
	if err != nil {
		t.Fatalf("fallback Prepare: %v", err)
	}
	if len(mounts) != 1 {
		t.Fatalf("mounts = %+v", mounts)
	}
	if f.reg.Gets.Load() != 0 {
		t.Error("fallback path fetched blobs")
	}
}

// TestRequireLabelsRefusesUnlabelledLayers: with RequireLabels (a policy is
// configured), an image-layer Prepare lacking any CRI label is refused with
// an error naming the missing labels and the containerd setting, nothing is
// created; a container's writable-layer Prepare still works.
func TestRequireLabelsRefusesUnlabelledLayers(t *testing.T) {
	f := newFixture(t)
	f.close()
	ctx := context.Background()
	client := registry.New(registry.Options{Insecure: []string{f.reg.Host}, Retries: 1})
	p, err := pull.New(pull.Options{Registry: client, StagingDir: filepath.Join(f.root, "staging")})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := snapshotter.New(ctx, snapshotter.Options{Root: filepath.Join(f.root, "sn"), Layers: pullsource.New(p), RequireLabels: true})
	if err != nil {
		t.Fatal(err)
	}
	f.sn, f.puller = sn, p

	for _, tc := range []struct {
		name    string
		labels  map[string]string
		missing []string
	}{
		{"no CRI labels", map[string]string{label.TargetSnapshotRef: "sha256:abc"},
			[]string{label.CRIImageRef, label.CRIManifestDigest, label.CRILayerDigest}},
		{"no manifest digest", map[string]string{label.TargetSnapshotRef: "sha256:abc",
			label.CRIImageRef: f.reg.Host + "/x:v1", label.CRILayerDigest: "sha256:def"},
			[]string{label.CRIManifestDigest}},
		// Image.Unpack (ctr image pull --local): no labels at all, only
		// the unpack key behind the metadata store's prefix.
		{"client-side unpack", nil,
			[]string{label.CRIImageRef, label.CRIManifestDigest, label.CRILayerDigest}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sn.Prepare(ctx, "default/3/extract-1 sha256:abc", "", snapshots.WithLabels(tc.labels))
			var ml *snapshotter.MissingLabelsError
			if !errors.As(err, &ml) || !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("Prepare = %v, want a MissingLabelsError (failed precondition)", err)
			}
			for _, want := range append(tc.missing, "enable_remote_snapshot_annotations", "disable_snapshot_annotations = false", "allow_unlabelled_layers") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if n := countAll(t, sn); n != 0 {
				t.Errorf("%d snapshots exist after a refused Prepare", n)
			}
		})
	}
	// A container's writable layer (no snapshot.ref label) is not an image layer.
	if _, err := sn.Prepare(ctx, "default/4/container-1", ""); err != nil {
		t.Fatalf("writable-layer Prepare: %v", err)
	}
	if f.reg.Gets.Load() != 0 {
		t.Error("refused Prepares fetched blobs")
	}
}

func countAll(t *testing.T, sn snapshots.Snapshotter) int {
	t.Helper()
	n := 0
	err := sn.Walk(context.Background(), func(context.Context, snapshots.Info) error { n++; return nil })
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: an empty store
		t.Fatal(err)
	}
	return n
}

func TestRestartRemovesHalfCommittedStaging(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// What a crash between Prepare and Commit in commitStaged leaves behind.
	if _, err := f.sn.Snapshotter.Prepare(ctx, "extract-9 sha256:def", "",
		snapshots.WithLabels(map[string]string{label.Staging: "true"})); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(f.root, "staging", "layer-123", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A container's active snapshot must survive.
	if _, err := f.sn.Prepare(ctx, "container-rootfs", ""); err != nil {
		t.Fatal(err)
	}
	f.close()
	f.open(t)
	if _, err := f.sn.Stat(ctx, "extract-9 sha256:def"); !errdefs.IsNotFound(err) {
		t.Errorf("half-committed staging snapshot survived restart: %v", err)
	}
	if _, err := f.sn.Stat(ctx, "container-rootfs"); err != nil {
		t.Errorf("container snapshot lost on restart: %v", err)
	}
	assertNoStaging(t, f)
}
