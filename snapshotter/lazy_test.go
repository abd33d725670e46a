package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// fakeMounter "mounts" a layer by writing a file naming its blob into the
// directory, and records what it was asked.
type fakeMounter struct {
	mu      sync.Mutex
	mounted map[string]LazyLayer
	mounts  int
	fail    error
}

func (f *fakeMounter) Mount(_ context.Context, dir string, l LazyLayer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.mounted == nil {
		f.mounted = map[string]LazyLayer{}
	}
	if _, ok := f.mounted[dir]; ok {
		return errors.New("already mounted")
	}
	f.mounted[dir] = l
	f.mounts++
	return os.WriteFile(filepath.Join(dir, "blob"), []byte(l.Blob.Digest), 0o644)
}

func (f *fakeMounter) Unmount(_ context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, dir)
	return os.Remove(filepath.Join(dir, "blob"))
}

// forget drops the mounts without unmounting (a process that died).
func (f *fakeMounter) forget() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounted = nil
}

func lazyImage(manifest string, toc []string, encrypted bool) *VerifiedImage {
	im := &VerifiedImage{Manifest: digest.FromString(manifest)}
	for i, t := range toc {
		blob := digest.FromString(manifest + "-blob" + string(rune('0'+i)))
		mt := ocispec.MediaTypeImageLayerGzip
		if encrypted {
			mt += "+encrypted"
		}
		desc := ocispec.Descriptor{MediaType: mt, Digest: blob, Size: 100}
		if t != "" {
			desc.Annotations = map[string]string{label.TOCDigest: t}
		}
		im.Layers = append(im.Layers, ImageLayer{Digest: blob, Encrypted: encrypted, Descriptor: desc})
		im.DiffIDs = append(im.DiffIDs, digest.FromString(manifest+"-diff"+string(rune('0'+i))))
	}
	return im
}

func layerLabels(ref string, im *VerifiedImage, i int) map[string]string {
	chain := identity.ChainIDs(append([]digest.Digest(nil), im.DiffIDs...))
	return map[string]string{
		label.TargetSnapshotRef: chain[i].String(),
		label.CRIImageRef:       ref,
		label.CRIManifestDigest: im.Manifest.String(),
		label.CRILayerDigest:    im.Layers[i].Digest.String(),
	}
}

// TestLazyPrepare: a layer whose verified descriptor names a TOC digest is
// mounted and committed (ErrAlreadyExists), with the layer from the
// verified manifest; its verdict is recorded as for a full pull; a label
// naming another TOC digest fails the Prepare; a layer without the
// annotation takes the full-pull path; the policy refuses as for a full
// pull; a restart mounts the committed layer again; Remove unmounts it.
func TestLazyPrepare(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "sn")
	toc := digest.FromString("toc").String()
	im := lazyImage("mixed", []string{toc, ""}, true)
	ref := "r/lazy:v1"
	src := &fakeSource{images: map[string]*VerifiedImage{ref + "@" + im.Manifest.String(): im}}
	m := &fakeMounter{}
	sn, err := New(ctx, Options{Root: root, Layers: src, Lazy: m})
	if err != nil {
		t.Fatal(err)
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), im.DiffIDs...))

	// A label naming another TOC digest: refused, nothing mounted.
	bad := layerLabels(ref, im, 0)
	bad[label.TOCDigest] = digest.FromString("other").String()
	_, err = sn.Prepare(ctx, "extract-1 "+chain[0].String(), "", snapshots.WithLabels(bad))
	var te *TOCLabelError
	if !errors.As(err, &te) || !errdefs.IsInvalidArgument(err) || m.mounts != 0 {
		t.Fatalf("Prepare with a wrong TOC label = %v (%d mounts), want TOCLabelError", err, m.mounts)
	}

	// Unsigned image: the policy's refusal, nothing mounted.
	other := layerLabels("r/unsigned:v1", im, 0)
	if _, err := sn.Prepare(ctx, "extract-2 "+chain[0].String(), "", snapshots.WithLabels(other)); !errdefs.IsPermissionDenied(err) || m.mounts != 0 {
		t.Fatalf("unsigned image: Prepare = %v (%d mounts), want permission denied", err, m.mounts)
	}

	good := layerLabels(ref, im, 0)
	good[label.TOCDigest] = toc
	if _, err := sn.Prepare(ctx, "extract-3 "+chain[0].String(), "", snapshots.WithLabels(good)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("lazy Prepare = %v, want already exists", err)
	}
	info, err := sn.Stat(ctx, chain[0].String())
	if err != nil || info.Kind != snapshots.KindCommitted || info.Labels[label.Lazy] != im.Layers[0].Digest.String() {
		t.Fatalf("committed lazy snapshot: %+v, %v", info, err)
	}
	var dir string
	var got LazyLayer
	for d, l := range m.mounted {
		dir, got = d, l
	}
	want := LazyLayer{ImageRef: ref, Manifest: im.Manifest, Blob: im.Layers[0].Descriptor, DiffID: im.DiffIDs[0], TOCDigest: digest.Digest(toc), Encrypted: true}
	if m.mounts != 1 || got.TOCDigest != want.TOCDigest || got.Blob.Digest != want.Blob.Digest || got.DiffID != want.DiffID || !got.Encrypted || got.Manifest != want.Manifest {
		t.Fatalf("mounted %+v (%d mounts), want %+v", got, m.mounts, want)
	}
	if rec, ok := sn.verdicts.layer(chain[0].String()); !ok || rec.Blob != im.Layers[0].Digest || !rec.Encrypted {
		t.Fatalf("layer record %+v, %v", rec, ok)
	}
	if _, ok := sn.verdicts.image(ref, im.Manifest); !ok {
		t.Fatal("no verdict recorded for the lazily pulled image")
	}

	// Layer 1 has no TOC annotation: full pull (the fake source refuses
	// layer pulls, which proves the path taken).
	if _, err := sn.Prepare(ctx, "extract-4 "+chain[1].String(), chain[0].String(), snapshots.WithLabels(layerLabels(ref, im, 1))); !errors.Is(err, errUnexpectedLayer) || m.mounts != 1 {
		t.Fatalf("layer without TOC: Prepare = %v (%d mounts), want the full-pull source's error", err, m.mounts)
	}

	// Another accepted image with the same diff IDs but another blob: it
	// may not run on the lazily served layer (its diff ID is unproven).
	twin := lazyImage("twin", []string{toc, ""}, true)
	twin.DiffIDs = im.DiffIDs
	src.images["r/twin:v1@"+twin.Manifest.String()] = twin
	var lo *LazyOriginError
	if _, err := sn.Prepare(ctx, "extract-5 "+chain[0].String(), "", snapshots.WithLabels(layerLabels("r/twin:v1", twin, 0))); !errors.As(err, &lo) || !errdefs.IsPermissionDenied(err) {
		t.Fatalf("other blob on a lazy layer: Prepare = %v, want LazyOriginError", err)
	}
	if err := sn.Admit(ctx, "r/twin:v1", twin.Manifest); !errors.As(err, &lo) {
		t.Fatalf("other blob on a lazy layer: Admit = %v, want LazyOriginError", err)
	}
	// The same image pulled again reuses it.
	if _, err := sn.Prepare(ctx, "extract-6 "+chain[0].String(), "", snapshots.WithLabels(layerLabels(ref, im, 0))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("same image again: Prepare = %v, want already exists", err)
	}

	// Restart: the committed layer is mounted again from its record.
	sn.Close()
	m.forget()
	sn, err = New(ctx, Options{Root: root, Layers: src, Lazy: m})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if l, ok := m.mounted[dir]; !ok || m.mounts != 2 || l.TOCDigest != want.TOCDigest || l.Blob.Digest != want.Blob.Digest {
		t.Fatalf("after restart: mounted %v (%d mounts)", m.mounted, m.mounts)
	}

	// A restart whose mount fails: containers on the layer are refused
	// (not run on its empty directory) until a retry mounts it.
	sn.Close()
	m.forget()
	retryDelay = 10 * time.Millisecond
	m.fail = errors.New("registry unreachable")
	sn, err = New(ctx, Options{Root: root, Layers: src, Lazy: m})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if _, err := sn.Prepare(ctx, "container-1", chain[0].String()); !errdefs.IsUnavailable(err) {
		t.Fatalf("container on an unmounted lazy layer: Prepare = %v, want unavailable", err)
	}
	if _, err := sn.View(ctx, "view-1", chain[0].String()); !errdefs.IsUnavailable(err) {
		t.Fatalf("view of an unmounted lazy layer: %v, want unavailable", err)
	}
	m.mu.Lock()
	m.fail = nil
	m.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err = sn.Prepare(ctx, "container-1", chain[0].String()); err == nil || !errdefs.IsUnavailable(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("container after the retry mounted the layer: %v", err)
	}
	if err := sn.Remove(ctx, "container-1"); err != nil {
		t.Fatal(err)
	}

	if err := sn.Remove(ctx, chain[0].String()); err != nil {
		t.Fatal(err)
	}
	if len(m.mounted) != 0 {
		t.Fatalf("Remove left %v mounted", m.mounted)
	}
	if _, ok := sn.verdicts.layer(chain[0].String()); ok {
		t.Fatal("Remove kept the layer record")
	}
}

// TestLazyMountFailure: a failed mount (e.g. a TOC that does not match)
// leaves nothing committed and no staging snapshot behind.
func TestLazyMountFailure(t *testing.T) {
	ctx := context.Background()
	toc := digest.FromString("toc").String()
	im := lazyImage("one", []string{toc}, false)
	ref := "r/lazy:v1"
	src := &fakeSource{images: map[string]*VerifiedImage{ref + "@" + im.Manifest.String(): im}}
	m := &fakeMounter{fail: errors.New("TOC digest mismatch: want " + toc)}
	sn, err := New(ctx, Options{Root: filepath.Join(t.TempDir(), "sn"), Layers: src, Lazy: m})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	chain := identity.ChainIDs(append([]digest.Digest(nil), im.DiffIDs...))
	_, err = sn.Prepare(ctx, "extract-1 "+chain[0].String(), "", snapshots.WithLabels(layerLabels(ref, im, 0)))
	if err == nil || errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare = %v, want the mount error", err)
	}
	n := 0
	if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d snapshots left after a failed lazy mount", n)
	}
}
