package snapshotter_test

import (
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
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/internal/katarules"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/katavolume"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

const kataRef = "registry.example/app:1"

func openKataHost(t *testing.T, root string, requireLabels bool) *snapshotter.Snapshotter {
	t.Helper()
	sn, err := snapshotter.New(context.Background(), snapshotter.Options{
		Root: root, RequireLabels: requireLabels, KataHost: &snapshotter.KataHostOptions{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn
}

// kataImage is a made-up image: layer blobs and chain IDs (kata-host mode
// never reads the blobs).
type kataImage struct {
	ref, manifest string
	layers        []digest.Digest
	chain         []string
}

func newKataImage(ref string, n int) kataImage {
	im := kataImage{ref: ref, manifest: digest.FromString("manifest " + ref).String()}
	for i := range n {
		im.layers = append(im.layers, digest.FromString(fmt.Sprintf("%s layer %d", ref, i)))
		im.chain = append(im.chain, digest.FromString(fmt.Sprintf("%s chain %d", ref, i)).String())
	}
	return im
}

// labels are what containerd's unpacker sets with the CRI target labels.
func (im kataImage) labels(i int) map[string]string {
	l := map[string]string{
		label.TargetSnapshotRef: im.chain[i],
		label.CRIImageRef:       im.ref,
		label.CRIManifestDigest: im.manifest,
		label.CRILayerDigest:    im.layers[i].String(),
	}
	if i > 0 {
		l[label.ParentChainID] = im.chain[i-1]
	}
	return l
}

func (im kataImage) parent(i int) string {
	if i == 0 {
		return ""
	}
	return im.chain[i-1]
}

// prepareLayer is the unpacker's Prepare of layer i; it must answer
// ErrAlreadyExists with the chain ID committed.
func (im kataImage) prepareLayer(t *testing.T, sn snapshots.Snapshotter, i int) {
	t.Helper()
	ctx := context.Background()
	key := fmt.Sprintf("extract-%d-%s %s", i, digest.FromString(t.Name()).Encoded()[:8], im.chain[i])
	_, err := sn.Prepare(ctx, key, im.parent(i), snapshots.WithLabels(im.labels(i)))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of layer %d = %v, want ErrAlreadyExists", i, err)
	}
	if _, err := sn.Stat(ctx, im.chain[i]); err != nil {
		t.Fatalf("layer %d not committed: %v", i, err)
	}
}

func (im kataImage) unpack(t *testing.T, sn snapshots.Snapshotter) {
	t.Helper()
	for i := range im.layers {
		im.prepareLayer(t, sn, i)
	}
}

func rulesMounts(m []mount.Mount) []katarules.Mount {
	var out []katarules.Mount
	for _, x := range m {
		out = append(out, katarules.Mount{Type: x.Type, Source: x.Source, Options: x.Options})
	}
	return out
}

// checkGuestPull checks a container rootfs mount: the Kata type, the three
// validators, the image reference as source and the metadata wanted.
func checkGuestPull(t *testing.T, m []mount.Mount, source string, metadata map[string]string) {
	t.Helper()
	if err := katarules.All(rulesMounts(m)); err != nil {
		t.Fatalf("mount %+v fails the Kata rules: %v", m, err)
	}
	if m[0].Type != snapshotter.DefaultKataMountType || m[0].Source != "overlay" {
		t.Fatalf("mount type %q source %q, want %q overlay", m[0].Type, m[0].Source, snapshotter.DefaultKataMountType)
	}
	v, ok, err := katavolume.FromOptions(m[0].Options)
	if err != nil || !ok {
		t.Fatalf("volume option: %v %v", ok, err)
	}
	if v.Source != source {
		t.Errorf("volume source %q, want %q", v.Source, source)
	}
	for k, want := range metadata {
		if got := v.ImagePull.Metadata[k]; got != want {
			t.Errorf("metadata %s = %q, want %q", k, got, want)
		}
	}
}

// mountPlain mounts m as the helper does (Kata option stripped, plain
// overlay) and returns the mount point; unmounted at cleanup.
func mountPlain(t *testing.T, m []mount.Mount) string {
	t.Helper()
	dir := t.TempDir()
	plain := mount.Mount{Type: "overlay", Source: m[0].Source, Options: katavolume.StripOptions(m[0].Options)}
	if err := plain.Mount(dir); err != nil {
		t.Fatalf("plain overlay mount: %v", err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// TestKataHostRecordsLayersWithoutFetching: layers with the CRI labels are
// committed empty and answered ErrAlreadyExists; the container rootfs on
// them (Prepare, Mounts, View) is the Kata guest-pull mount, which also
// mounts as a plain (empty, writable) overlay for the host.
func TestKataHostRecordsLayersWithoutFetching(t *testing.T) {
	ctx := context.Background()
	sn := openKataHost(t, t.TempDir(), true)
	im := newKataImage(kataRef, 3)
	im.unpack(t, sn)
	im.prepareLayer(t, sn, 1) // again: already there
	for i, c := range im.chain {
		info, err := sn.Stat(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if info.Labels[label.KataHost] != im.layers[i].String() || info.Labels[label.CRIImageRef] != kataRef {
			t.Errorf("layer %d labels %v", i, info.Labels)
		}
	}
	want := map[string]string{label.CRIImageRef: kataRef, label.CRILayerDigest: im.layers[2].String(),
		label.CRIManifestDigest: im.manifest, label.KataHost: im.layers[2].String()}
	m, err := sn.Prepare(ctx, "k8s.io/1/app", im.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkGuestPull(t, m, kataRef, want)
	if m2, err := sn.Mounts(ctx, "k8s.io/1/app"); err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
		t.Fatalf("Mounts = %v, %v; want what Prepare returned %v", m2, err, m)
	}
	dir := mountPlain(t, m)
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("rootfs of recorded layers: %v %v, want empty", ents, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "w"), nil, 0o600); err != nil {
		t.Fatalf("rootfs not writable: %v", err)
	}
	v, err := sn.View(ctx, "k8s.io/2/view", im.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkGuestPull(t, v, kataRef, want)
	// A View on one layer stays the overlay snapshotter's read-only bind.
	if v1, err := sn.View(ctx, "k8s.io/3/view", im.chain[0]); err != nil || v1[0].Type != "bind" {
		t.Fatalf("View on one layer = %v, %v; want a bind mount", v1, err)
	}
}

// TestKataHostRefusesUnlabelledLayers: a layer without the CRI labels
// would be pulled on the host; it is refused naming the settings to fix,
// unless allow_unlabelled_layers lets containerd apply it.
func TestKataHostRefusesUnlabelledLayers(t *testing.T) {
	ctx := context.Background()
	sn := openKataHost(t, t.TempDir(), true)
	chain := digest.FromString("unlabelled").String()
	for _, labels := range []map[string]string{
		{label.TargetSnapshotRef: chain},
		{label.TargetSnapshotRef: chain, label.CRIImageRef: kataRef, label.CRIManifestDigest: "sha256:1"}, // no layer digest
		nil, // ctr image pull --local: only the unpack key names the layer
	} {
		_, err := sn.Prepare(ctx, "extract-1 "+chain, "", snapshots.WithLabels(labels))
		var le *snapshotter.KataLabelsError
		if !errors.As(err, &le) || !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Prepare with labels %v = %v, want KataLabelsError", labels, err)
		}
		for _, s := range []string{"disable_snapshot_annotations = false", "enable_remote_snapshot_annotations",
			"io.containerd.cri.runtime-handler", "allow_unlabelled_layers", label.CRILayerDigest} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error does not name %s: %v", s, err)
			}
		}
	}
	if n := countAll(t, sn); n != 0 {
		t.Fatalf("%d snapshots after refusals, want 0", n)
	}
}

// TestKataHostForeignLayers: layers containerd applied (allowed unlabelled,
// as another snapshotter's pause image) keep their content: the rootfs is
// still the Kata mount (fallback volume), and plain overlay shows the files.
func TestKataHostForeignLayers(t *testing.T) {
	ctx := context.Background()
	sn := openKataHost(t, t.TempDir(), false)
	chain := digest.FromString("pause").String()
	key := "extract-1 " + chain
	m, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{label.TargetSnapshotRef: chain}))
	if err != nil {
		t.Fatalf("unlabelled layer with allow_unlabelled_layers: %v", err)
	}
	dir := t.TempDir()
	if err := mount.All(m, dir); err != nil {
		t.Fatal(err)
	}
	werr := os.WriteFile(filepath.Join(dir, "pause"), []byte("binary"), 0o755)
	if err := mount.UnmountAll(dir, 0); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	if err := sn.Commit(ctx, chain, key); err != nil {
		t.Fatal(err)
	}
	c, err := sn.Prepare(ctx, "k8s.io/9/sandbox", chain)
	if err != nil {
		t.Fatal(err)
	}
	checkGuestPull(t, c, chain, map[string]string{label.KataFallback: "true"})
	b, err := os.ReadFile(filepath.Join(mountPlain(t, c), "pause"))
	if err != nil || string(b) != "binary" {
		t.Fatalf("foreign layer content through the plain mount: %q %v", b, err)
	}

	// An image recorded for guest pull on top of that layer (a shared
	// base): a guest pull of that image, the base's content underneath.
	im := newKataImage(kataRef, 2)
	im.chain[0] = chain
	im.prepareLayer(t, sn, 1)
	c, err = sn.Prepare(ctx, "k8s.io/10/app", im.chain[1])
	if err != nil {
		t.Fatal(err)
	}
	checkGuestPull(t, c, kataRef, map[string]string{label.KataFallback: "", label.CRILayerDigest: im.layers[1].String()})
	if _, err := os.Stat(filepath.Join(mountPlain(t, c), "pause")); err != nil {
		t.Fatal(err)
	}
}

// TestKataHostLostMetadata: with the metadata store deleted between
// Prepares, the next layer and container Prepares still work: missing
// parents are recreated from the labels and the chain.
func TestKataHostLostMetadata(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	im := newKataImage(kataRef, 3)

	sn := openKataHost(t, root, true)
	im.prepareLayer(t, sn, 0)
	im.prepareLayer(t, sn, 1)
	sn.Close()
	if err := os.Remove(filepath.Join(root, "metadata.db")); err != nil {
		t.Fatal(err)
	}
	sn = openKataHost(t, root, true)
	im.prepareLayer(t, sn, 2) // parent chain[1] is gone
	info, err := sn.Stat(ctx, im.chain[1])
	if err != nil || info.Labels[label.KataRecovered] == "" || info.Labels[label.CRIImageRef] != kataRef {
		t.Fatalf("recovered parent: %+v %v", info, err)
	}
	m, err := sn.Prepare(ctx, "k8s.io/1/app", im.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkGuestPull(t, m, kataRef, map[string]string{label.CRILayerDigest: im.layers[2].String()})

	sn.Close()
	if err := os.Remove(filepath.Join(root, "metadata.db")); err != nil {
		t.Fatal(err)
	}
	sn = openKataHost(t, root, true)
	// A container on a top layer nobody remembers: the chain ID stands in
	// for the unknown image reference.
	m, err = sn.Prepare(ctx, "k8s.io/2/app", im.chain[2])
	if err != nil {
		t.Fatalf("container Prepare after the store was lost: %v", err)
	}
	checkGuestPull(t, m, im.chain[2], nil)
	if _, err := sn.Mounts(ctx, "k8s.io/2/app"); err != nil {
		t.Fatal(err)
	}
}

// TestKataHostRestoredMetadata: a metadata store restored from an older
// copy (snapshot IDs handed out again while their directories remain)
// still serves the next Prepares and Mounts.
func TestKataHostRestoredMetadata(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	db := filepath.Join(root, "metadata.db")
	im := newKataImage(kataRef, 2)

	sn := openKataHost(t, root, true)
	im.prepareLayer(t, sn, 0)
	sn.Close()
	old, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	sn = openKataHost(t, root, true)
	im.prepareLayer(t, sn, 1)
	if _, err := sn.Prepare(ctx, "k8s.io/1/app", im.chain[1]); err != nil {
		t.Fatal(err)
	}
	sn.Close()
	if err := os.WriteFile(db, old, 0o600); err != nil {
		t.Fatal(err)
	}

	sn = openKataHost(t, root, true)
	m, err := sn.Prepare(ctx, "k8s.io/2/app", im.chain[1]) // chain[1] is not in the old store
	if err != nil {
		t.Fatalf("container Prepare after restoring an old store: %v", err)
	}
	// Recreated without a parent or labels: the chain ID stands in for
	// the image reference.
	checkGuestPull(t, m, im.chain[1], nil)
	if m2, err := sn.Mounts(ctx, "k8s.io/2/app"); err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
		t.Fatalf("Mounts = %v, %v", m2, err)
	}
	im.prepareLayer(t, sn, 1)
	mountPlain(t, m)
	// The directories of the snapshots the old store does not know (the
	// second layer, the first container) were moved aside, not deleted.
	moved, err := filepath.Glob(filepath.Join(root, "orphaned", "*", "*"))
	if err != nil || len(moved) != 2 {
		t.Fatalf("orphaned directories %v, %v; want 2", moved, err)
	}
}

// TestKataMountType: only types the Kata Go runtime recognises are taken.
func TestKataMountType(t *testing.T) {
	for typ, ok := range map[string]bool{
		"": true, // the default
		"fuse./opt/cocoon/bin/nydus-overlayfs-cocoon": true,
		"fuse.nydus-overlayfs":                        true,
		"fuse.cocoon-overlay":                         false,
		"overlay":                                     false,
		"nydus-overlayfs-cocoon":                      false,
	} {
		sn, err := snapshotter.New(context.Background(), snapshotter.Options{Root: t.TempDir(), KataHost: &snapshotter.KataHostOptions{MountType: typ}})
		if (err == nil) != ok {
			t.Errorf("mount type %q: %v", typ, err)
		}
		if err == nil {
			sn.Close()
		}
	}
}
