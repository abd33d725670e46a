package snapshotter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// Trust is decided per image, not per layer: containerd's metadata store
// answers a layer Prepare itself when the chain ID is already committed in
// its namespace, so an image whose layers all exist never reaches the
// snapshotter. What cocoond can do is record, per committed layer, the
// images the policy accepted on it and the blob it came from, and answer
// an admission check (Admit, called by the NRI plugin on CreateContainer)
// for the image a container is actually created from.

// verdictOf builds the verdict of a verified, accepted image.
func verdictOf(ref string, im *VerifiedImage) ImageVerdict {
	iv := ImageVerdict{Ref: ref, Manifest: im.Manifest, Accepted: time.Now().UTC()}
	for _, l := range im.Layers {
		iv.Layers = append(iv.Layers, l.Digest)
		iv.Encrypted = append(iv.Encrypted, l.Encrypted)
	}
	iv.ChainIDs = identity.ChainIDs(append([]digest.Digest(nil), im.DiffIDs...))
	return iv
}

// recordLayer records that req's image was accepted and that target was
// committed from the staged layer's blob.
func (s *Snapshotter) recordLayer(ctx context.Context, req LayerRequest, target string, staged *StagedLayer) error {
	im, err := s.layers.Verify(ctx, req.ImageRef, req.ManifestDigest)
	if err != nil {
		return fmt.Errorf("record verdict for %s: %w", req.ImageRef, err)
	}
	return s.verdicts.record(verdictOf(req.ImageRef, im), target, staged.Blob, staged.Encrypted)
}

// reuse admits an already committed layer for req's image: the image must
// pass the policy, name the layer at the chain position containerd asked
// for, and, if the layer was decrypted, name the same encrypted blob.
func (s *Snapshotter) reuse(ctx context.Context, target string, req LayerRequest) error {
	im, err := s.layers.Verify(ctx, req.ImageRef, req.ManifestDigest)
	if err != nil {
		return fmt.Errorf("image %s@%s for committed layer %s: %w", req.ImageRef, req.ManifestDigest, target, err)
	}
	iv := verdictOf(req.ImageRef, im)
	idx, ok := im.layerIndex(req.LayerDigest)
	if !ok || iv.ChainIDs[idx].String() != target {
		return fmt.Errorf("layer %s is not layer %s of manifest %s: %w", req.LayerDigest, target, req.ManifestDigest, errdefs.ErrInvalidArgument)
	}
	if err := s.checkOrigins(iv); err != nil {
		return err
	}
	return s.verdicts.record(iv, target, req.LayerDigest, im.Layers[idx].Encrypted)
}

// checkOrigins refuses an image that runs on a layer decrypted from an
// encrypted blob its manifest does not name at that position: an image
// made without the key, relabelling the plain layers, must not inherit
// the decrypted rootfs.
func (s *Snapshotter) checkOrigins(iv ImageVerdict) error {
	for i, chain := range iv.ChainIDs {
		rec, ok := s.verdicts.layer(chain.String())
		if ok && rec.Lazy && (i >= len(iv.Layers) || iv.Layers[i] != rec.Blob) {
			named := "nothing"
			if i < len(iv.Layers) {
				named = iv.Layers[i].String()
			}
			return &LazyOriginError{Ref: iv.Ref, Manifest: iv.Manifest, Index: i, ChainID: chain, Blob: rec.Blob, Named: named}
		}
		if !ok || !rec.Encrypted {
			continue
		}
		// The same blob relabelled as a plain layer does not count: that
		// image could be made without the key.
		if i >= len(iv.Layers) || i >= len(iv.Encrypted) || iv.Layers[i] != rec.Blob || !iv.Encrypted[i] {
			named := "nothing"
			if i < len(iv.Layers) {
				named = iv.Layers[i].String()
				if i >= len(iv.Encrypted) || !iv.Encrypted[i] {
					named += " as a plain layer"
				}
			}
			return &OriginError{Ref: iv.Ref, Manifest: iv.Manifest, Index: i, ChainID: chain, Encrypted: rec.Blob, Named: named}
		}
	}
	return nil
}

// OriginError: a layer was decrypted from an encrypted blob that the image
// asking for it does not name. It wraps errdefs.ErrPermissionDenied.
type OriginError struct {
	Ref       string
	Manifest  digest.Digest
	Index     int
	ChainID   digest.Digest
	Encrypted digest.Digest // the blob the layer was decrypted from
	Named     string        // what the image's manifest names there
}

func (e *OriginError) Error() string {
	return fmt.Sprintf("image %s@%s: layer %d (chain %s) was decrypted from the encrypted blob %s, but this image names %s there; "+
		"an image may use a decrypted layer only if it names the same encrypted blob as an encrypted layer: %v",
		e.Ref, e.Manifest, e.Index, e.ChainID, e.Encrypted, e.Named, errdefs.ErrPermissionDenied)
}

func (e *OriginError) Unwrap() error { return errdefs.ErrPermissionDenied }

// LazyOriginError: a lazily served layer is asked for by an image that
// names another blob at its position. The layer's diff ID (its chain ID)
// is verified only when its background fetch completes, so until then it
// is only the content of the blob its TOC came from. It wraps
// errdefs.ErrPermissionDenied.
type LazyOriginError struct {
	Ref      string
	Manifest digest.Digest
	Index    int
	ChainID  digest.Digest
	Blob     digest.Digest // the blob the layer is served from
	Named    string        // what the image's manifest names there
}

func (e *LazyOriginError) Error() string {
	return fmt.Sprintf("image %s@%s: layer %d (chain %s) is served lazily from blob %s, but this image names %s there; "+
		"a lazily served layer may be used only by images naming its blob: %v",
		e.Ref, e.Manifest, e.Index, e.ChainID, e.Blob, e.Named, errdefs.ErrPermissionDenied)
}

func (e *LazyOriginError) Unwrap() error { return errdefs.ErrPermissionDenied }

// Admit decides whether a container may be created from the image (ref,
// dgst), dgst being the manifest or index digest containerd's image store
// holds for ref. An image pulled through cocoond has a recorded verdict;
// any other (its layers all committed for other images, so containerd never
// asked) is checked against the image security policy now, as image-rs
// checks every pull. Either way it must name the encrypted blobs of the
// decrypted layers it runs on.
func (s *Snapshotter) Admit(ctx context.Context, ref string, dgst digest.Digest) error {
	if ref == "" || dgst == "" {
		return fmt.Errorf("container image identity incomplete (reference %q, digest %q): %w", ref, dgst, errdefs.ErrPermissionDenied)
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("container image digest %q: %w", dgst, errdefs.ErrInvalidArgument)
	}
	iv, ok := s.verdicts.image(ref, dgst)
	if !ok {
		if s.layers == nil {
			return fmt.Errorf("image %s@%s has no verdict and guest pull is disabled: %w", ref, dgst, errdefs.ErrPermissionDenied)
		}
		im, err := s.layers.Verify(ctx, ref, dgst)
		if err != nil {
			return fmt.Errorf("image %s@%s: %w", ref, dgst, err)
		}
		iv = verdictOf(ref, im)
		log.G(ctx).WithFields(log.Fields{"image": ref, "manifest": iv.Manifest}).
			Info("image had no verdict (its layers were committed for other images); accepted by the image security policy now")
	}
	if err := s.checkOrigins(iv); err != nil {
		return err
	}
	if !ok {
		return s.verdicts.record(iv, "", "", false)
	}
	return nil
}

// warnForeignVerdicts logs when a container's writable layer is prepared
// on a layer that was accepted only for other images. On the CRI path the
// Prepare names the image (cri.image-ref); plain `ctr run` names none, so
// only the images accepted on the layer can be logged.
func (s *Snapshotter) warnForeignVerdicts(ctx context.Context, key, parent string, labels map[string]string) {
	if parent == "" {
		return
	}
	rec, ok := s.verdicts.layer(parent)
	if !ok {
		return
	}
	l := log.G(ctx).WithFields(log.Fields{"key": key, "parent": parent, "accepted_for": rec.imagesOn()})
	ref := labels[label.CRIImageRef]
	if ref == "" {
		l.Info("container snapshot on guest-pulled layers; containerd does not say which image it runs, so the image security policy is enforced only by the NRI plugin")
		return
	}
	for _, k := range rec.Images {
		if strings.HasPrefix(k, ref+"@") {
			return
		}
	}
	l.WithField("image", ref).Warn("container snapshot for an image whose policy verdict was never recorded on these layers: they were accepted for other images")
}

// Remove removes a snapshot and forgets the layer record of a committed
// one; a lazy layer is unmounted first (and mounted again if the removal
// fails).
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	info, statErr := s.Snapshotter.Stat(ctx, key)
	remount := func() {}
	if statErr == nil && info.Kind == snapshots.KindCommitted && info.Labels[label.Lazy] != "" {
		unlock := s.lock(key)
		defer unlock()
		var err error
		if remount, err = s.unmountLazy(ctx, info); err != nil {
			return err
		}
	}
	if err := s.Snapshotter.Remove(ctx, key); err != nil {
		remount()
		return err
	}
	s.setUnmounted(key, false)
	if statErr == nil && info.Kind == snapshots.KindCommitted {
		if err := s.verdicts.forget(key); err != nil {
			log.G(ctx).WithError(err).WithField("key", key).Warn("forget layer verdicts")
		}
	}
	return nil
}
