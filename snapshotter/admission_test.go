package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// fakeSource answers Verify from a table (the image security policy and
// the registry); Layer is never expected.
type fakeSource struct {
	images   map[string]*VerifiedImage // "ref@digest"
	verifies int
}

var errUnexpectedLayer = errors.New("unexpected layer pull")

func (f *fakeSource) Layer(context.Context, LayerRequest) (*StagedLayer, error) {
	return nil, errUnexpectedLayer
}

func (f *fakeSource) Verify(_ context.Context, ref string, dgst digest.Digest) (*VerifiedImage, error) {
	f.verifies++
	if im, ok := f.images[ref+"@"+dgst.String()]; ok {
		return im, nil
	}
	return nil, fmt.Errorf("Image policy rejected: Denied by policy: %w", errdefs.ErrPermissionDenied)
}

// fakeImage is an image whose layer i has blob digest blobs[i] and diff ID
// diffs[i], every blob encrypted or none.
func fakeImage(manifest string, blobs []digest.Digest, encrypted bool, diffs []digest.Digest) *VerifiedImage {
	im := &VerifiedImage{Manifest: digest.FromString(manifest), DiffIDs: diffs}
	for _, b := range blobs {
		im.Layers = append(im.Layers, ImageLayer{Digest: b, Encrypted: encrypted})
	}
	return im
}

// staged is what a guest pull of layer i of im would have committed.
func staged(im *VerifiedImage, i int) *StagedLayer {
	return &StagedLayer{Blob: im.Layers[i].Digest, Encrypted: im.Layers[i].Encrypted}
}

func openWith(t *testing.T, root string, src LayerSource) *Snapshotter {
	t.Helper()
	sn, err := New(context.Background(), Options{Root: root, Layers: src})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn
}

// commitLayer commits an empty layer as chainID, as a guest pull would.
func commitLayer(t *testing.T, sn *Snapshotter, chainID, parent string) {
	t.Helper()
	ctx := context.Background()
	if _, err := sn.Snapshotter.Prepare(ctx, "tmp-"+chainID, parent); err != nil {
		t.Fatal(err)
	}
	if err := sn.Snapshotter.Commit(ctx, chainID, "tmp-"+chainID); err != nil {
		t.Fatal(err)
	}
}

// TestAdmitPerImage: a container is admitted only for an image the policy
// accepted itself, not for one that merely shares committed layers; the
// verdict is kept across restarts; an image may not run on layers
// decrypted from encrypted blobs it does not name.
func TestAdmitPerImage(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	diffs := []digest.Digest{digest.FromString("diff0"), digest.FromString("diff1")}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffs...))
	plainBlobs := []digest.Digest{digest.FromString("plain0"), digest.FromString("plain1")}
	encBlobs := []digest.Digest{digest.FromString("enc0"), digest.FromString("enc1")}

	signed := fakeImage("signed", plainBlobs, false, diffs)
	encrypted := fakeImage("encrypted", encBlobs, true, diffs)
	// Made without the key: the encrypted blobs named as plain layers.
	relabelled := fakeImage("relabelled", encBlobs, false, diffs)
	src := &fakeSource{images: map[string]*VerifiedImage{
		"r/signed:v1@" + signed.Manifest.String():         signed,
		"r/encrypted:v1@" + encrypted.Manifest.String():   encrypted,
		"r/relabelled:v1@" + relabelled.Manifest.String(): relabelled,
	}}
	sn := openWith(t, filepath.Join(root, "sn"), src)

	// The signed image was pulled: its layers committed with verdicts.
	commitLayer(t, sn, chain[0].String(), "")
	commitLayer(t, sn, chain[1].String(), chain[0].String())
	for i := range chain {
		req := LayerRequest{ImageRef: "r/signed:v1", ManifestDigest: signed.Manifest, LayerDigest: plainBlobs[i]}
		if err := sn.recordLayer(ctx, req, chain[i].String(), staged(signed, i)); err != nil {
			t.Fatal(err)
		}
	}
	src.verifies = 0
	if err := sn.Admit(ctx, "r/signed:v1", signed.Manifest); err != nil {
		t.Fatalf("signed image: %v", err)
	}
	if src.verifies != 0 {
		t.Errorf("a recorded verdict was evaluated again (%d verifies)", src.verifies)
	}
	// Same layers, another manifest, refused by the policy.
	mutated := digest.FromString("mutated")
	if err := sn.Admit(ctx, "r/mutated:v1", mutated); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("unsigned image sharing the layers: Admit = %v, want permission denied", err)
	}
	// The accepted reference with another digest is another image.
	if err := sn.Admit(ctx, "r/signed:v1", mutated); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("signed reference, other digest: Admit = %v, want permission denied", err)
	}
	for _, bad := range [][2]string{{"", signed.Manifest.String()}, {"r/signed:v1", ""}, {"r/signed:v1", "sha256:zz"}} {
		if err := sn.Admit(ctx, bad[0], digest.Digest(bad[1])); err == nil {
			t.Errorf("Admit(%q, %q) accepted", bad[0], bad[1])
		}
	}

	// A restart keeps the verdict (no registry needed for a pulled image).
	sn.Close()
	src.verifies = 0
	sn = openWith(t, filepath.Join(root, "sn"), src)
	if err := sn.Admit(ctx, "r/signed:v1", signed.Manifest); err != nil || src.verifies != 0 {
		t.Fatalf("after restart: Admit = %v with %d verifies, want the recorded verdict", err, src.verifies)
	}

	// Encrypted layers: decrypted layers recorded with their encrypted
	// blobs (a fresh store: other chain IDs would do as well).
	sn2 := openWith(t, filepath.Join(root, "sn2"), src)
	commitLayer(t, sn2, chain[0].String(), "")
	commitLayer(t, sn2, chain[1].String(), chain[0].String())
	for i := range chain {
		req := LayerRequest{ImageRef: "r/encrypted:v1", ManifestDigest: encrypted.Manifest, LayerDigest: encBlobs[i]}
		if err := sn2.recordLayer(ctx, req, chain[i].String(), staged(encrypted, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn2.Admit(ctx, "r/encrypted:v1", encrypted.Manifest); err != nil {
		t.Fatalf("encrypted image: %v", err)
	}
	// Accepted by the policy, same diff IDs, but plain blobs: made without
	// the key, it must not run on the decrypted rootfs.
	err := sn2.Admit(ctx, "r/relabelled:v1", relabelled.Manifest)
	var oe *OriginError
	if !errors.As(err, &oe) || !errdefs.IsPermissionDenied(err) || oe.Encrypted != encBlobs[0] || oe.Named != encBlobs[0].String()+" as a plain layer" {
		t.Fatalf("relabelled image: Admit = %v, want an OriginError for layer 0", err)
	}
	// Plain blobs with the same diff IDs (the signed image's) do not
	// name the encrypted blobs either.
	if err := sn2.Admit(ctx, "r/signed:v1", signed.Manifest); !errors.As(err, &oe) {
		t.Fatalf("plain image on decrypted layers: Admit = %v, want an OriginError", err)
	}

	// The same through a layer Prepare that containerd does pass on (the
	// chain exists in cocoond's store, not in containerd's namespace).
	labels := map[string]string{
		label.TargetSnapshotRef: chain[0].String(),
		label.CRIImageRef:       "r/relabelled:v1",
		label.CRIManifestDigest: relabelled.Manifest.String(),
		label.CRILayerDigest:    encBlobs[0].String(),
	}
	if _, err := sn2.Prepare(ctx, "ns/9/extract-1 "+chain[0].String(), "", snapshots.WithLabels(labels)); !errors.As(err, &oe) {
		t.Fatalf("Prepare of a decrypted layer for a relabelled image = %v, want an OriginError", err)
	}
	labels[label.CRIImageRef], labels[label.CRIManifestDigest] = "r/mutated:v1", mutated.String()
	if _, err := sn2.Prepare(ctx, "ns/9/extract-2 "+chain[0].String(), "", snapshots.WithLabels(labels)); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("Prepare of a committed layer for an image the policy refuses = %v, want permission denied", err)
	}
	labels[label.CRIImageRef], labels[label.CRIManifestDigest], labels[label.CRILayerDigest] = "r/encrypted:v1", encrypted.Manifest.String(), encBlobs[0].String()
	if _, err := sn2.Prepare(ctx, "ns/9/extract-3 "+chain[0].String(), "", snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a committed layer for its own image = %v, want already exists", err)
	}
}

// TestWarnForeignVerdicts: a container snapshot whose Prepare names an
// image (CRI with snapshot annotations) on layers accepted only for other
// images is logged as a warning; one without a name (ctr run) is logged
// with the images accepted on its layers.
func TestWarnForeignVerdicts(t *testing.T) {
	ctx := context.Background()
	diffs := []digest.Digest{digest.FromString("diff0")}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffs...))
	blobs := []digest.Digest{digest.FromString("plain0")}
	signed := fakeImage("signed", blobs, false, diffs)
	src := &fakeSource{images: map[string]*VerifiedImage{"r/signed:v1@" + signed.Manifest.String(): signed}}
	sn := openWith(t, t.TempDir(), src)
	commitLayer(t, sn, chain[0].String(), "")
	req := LayerRequest{ImageRef: "r/signed:v1", ManifestDigest: signed.Manifest, LayerDigest: blobs[0]}
	if err := sn.recordLayer(ctx, req, chain[0].String(), staged(signed, 0)); err != nil {
		t.Fatal(err)
	}
	hook := logtest.NewLocal(log.L.Logger)
	defer hook.Reset()
	for _, tc := range []struct {
		ref   string
		level logrus.Level
	}{
		{"r/mutated:v1", logrus.WarnLevel},
		{"", logrus.InfoLevel},
		{"r/signed:v1", logrus.PanicLevel}, // nothing logged
	} {
		hook.Reset()
		var opts []snapshots.Opt
		if tc.ref != "" {
			opts = append(opts, snapshots.WithLabels(map[string]string{label.CRIImageRef: tc.ref}))
		}
		if _, err := sn.Prepare(ctx, "k8s.io/5/ctr-"+randomSuffix(tc.ref), chain[0].String(), opts...); err != nil {
			t.Fatal(err)
		}
		var got []*logrus.Entry
		for _, e := range hook.AllEntries() {
			if _, ok := e.Data["accepted_for"]; ok {
				got = append(got, e)
			}
		}
		if tc.level == logrus.PanicLevel {
			if len(got) != 0 {
				t.Errorf("image %q accepted on the layer: logged %q", tc.ref, got[0].Message)
			}
			continue
		}
		if len(got) != 1 || got[0].Level != tc.level {
			t.Errorf("image %q: entries %v, want one at %s naming the accepted images", tc.ref, got, tc.level)
		}
	}
}

func randomSuffix(s string) string { return digest.FromString(s).Encoded()[:8] }
