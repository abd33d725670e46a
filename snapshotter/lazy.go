package snapshotter

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// Lazy pull: an image layer whose descriptor, in the manifest the image
// security policy accepted (LayerSource.Verify, the same gate as a full
// pull), carries the eStargz TOC digest annotation is not fetched: a
// LazyMounter serves it read-only at the snapshot's directory (which
// overlayfs then uses as a lowerdir) and the snapshot is committed at once.
// The TOC digest comes from that manifest only; a label naming another one
// fails the Prepare. The verified layer is written next to the snapshot
// directory (lazyRecordName) so that a restarted cocoond mounts it again.

// LazyMounter serves verified eStargz layers at snapshot directories. It is
// the seam between the snapshotter and the FUSE layer (in process:
// snapshotter/lazysource; or a detached server), so LazyLayer carries only
// data.
type LazyMounter interface {
	// Mount serves l read-only at dir, an existing directory, and returns
	// once the mount is in place. The TOC must be checked against
	// l.TOCDigest before the mount exists, and every chunk against the TOC
	// before it is served.
	Mount(ctx context.Context, dir string, l LazyLayer) error
	// Unmount stops serving dir and drops the local copy of its layer.
	// Unmounting a directory that is not served is not an error.
	Unmount(ctx context.Context, dir string) error
}

// LazyLayer is one verified eStargz layer to serve: every field comes from
// the policy-accepted manifest and config of ImageRef@Manifest.
type LazyLayer struct {
	ImageRef  string             `json:"image_ref"`
	Manifest  digest.Digest      `json:"manifest"`
	Blob      ocispec.Descriptor `json:"blob"`
	DiffID    digest.Digest      `json:"diff_id"`
	TOCDigest digest.Digest      `json:"toc_digest"`
	Encrypted bool               `json:"encrypted,omitempty"`
}

// lazyRecordName is the file, beside a lazy snapshot's directory (in the
// snapshot's own directory, removed with it), holding its LazyLayer.
const lazyRecordName = "lazy.json"

// TOCLabelError: the Prepare's TOC digest label differs from what the
// verified manifest's layer descriptor names. It wraps
// errdefs.ErrInvalidArgument.
type TOCLabelError struct {
	Layer    digest.Digest
	Label    string // the label's value
	Manifest string // the verified descriptor's annotation ("" when absent)
}

func (e *TOCLabelError) Error() string {
	named := e.Manifest
	if named == "" {
		named = "no TOC digest"
	}
	return fmt.Sprintf("layer %s: the Prepare's label %s names TOC digest %s, but the verified manifest names %s: %v",
		e.Layer, label.TOCDigest, e.Label, named, errdefs.ErrInvalidArgument)
}

func (e *TOCLabelError) Unwrap() error { return errdefs.ErrInvalidArgument }

// lazyLayer returns the LazyLayer of req when its verified descriptor
// carries a TOC digest (nil otherwise), with the verified image.
func (s *Snapshotter) lazyLayer(ctx context.Context, req LayerRequest, target string, labels map[string]string) (*LazyLayer, *VerifiedImage, error) {
	im, err := s.layers.Verify(ctx, req.ImageRef, req.ManifestDigest)
	if err != nil {
		return nil, nil, fmt.Errorf("guest pull of layer %s for %s: %w", req.LayerDigest, req.ImageRef, err)
	}
	idx, ok := im.layerIndex(req.LayerDigest)
	if !ok {
		return nil, nil, fmt.Errorf("layer %s is not in manifest %s: %w", req.LayerDigest, req.ManifestDigest, errdefs.ErrInvalidArgument)
	}
	desc := im.Layers[idx].Descriptor
	toc := desc.Annotations[label.TOCDigest]
	if l, ok := labels[label.TOCDigest]; ok && l != toc {
		return nil, nil, &TOCLabelError{Layer: req.LayerDigest, Label: l, Manifest: toc}
	}
	if toc == "" {
		return nil, im, nil
	}
	tocDigest, err := digest.Parse(toc)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: TOC digest annotation %q: %w: %w", req.LayerDigest, toc, err, errdefs.ErrInvalidArgument)
	}
	if idx >= len(im.DiffIDs) {
		return nil, nil, fmt.Errorf("layer %s: the image config names %d diff IDs for %d layers: %w", req.LayerDigest, len(im.DiffIDs), len(im.Layers), errdefs.ErrInvalidArgument)
	}
	diffID := im.DiffIDs[idx]
	if req.DiffID != "" && req.DiffID != diffID {
		return nil, nil, fmt.Errorf("layer %s: containerd names diff ID %s, the verified config %s: %w", req.LayerDigest, req.DiffID, diffID, errdefs.ErrInvalidArgument)
	}
	if chain := identity.ChainIDs(append([]digest.Digest(nil), im.DiffIDs[:idx+1]...))[idx]; chain.String() != target {
		return nil, nil, fmt.Errorf("layer %s: chain ID from the verified image config is %s, but containerd asked for %s: %w",
			req.LayerDigest, chain, target, errdefs.ErrInvalidArgument)
	}
	return &LazyLayer{
		ImageRef: req.ImageRef, Manifest: im.Manifest, Blob: desc, DiffID: diffID,
		TOCDigest: tocDigest, Encrypted: im.Layers[idx].Encrypted,
	}, im, nil
}

// lazyPull mounts ll at a new snapshot and commits it as target, then
// records the image's verdict as a full pull does.
func (s *Snapshotter) lazyPull(ctx context.Context, key, parent, target string, ll *LazyLayer, im *VerifiedImage, labels map[string]string) error {
	alreadyExists := fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	if err := s.commitLazy(ctx, key, parent, target, ll, labels); err != nil {
		if errdefs.IsAlreadyExists(err) && s.exists(ctx, target) {
			return alreadyExists
		}
		return fmt.Errorf("lazy pull of layer %s for %s: %w", ll.Blob.Digest, ll.ImageRef, err)
	}
	log.G(ctx).WithFields(log.Fields{"diff_id": ll.DiffID, "toc": ll.TOCDigest, "encrypted": ll.Encrypted}).Info("lazy layer mounted and committed")
	rec := LayerRecord{Blob: ll.Blob.Digest, Encrypted: ll.Encrypted, Lazy: true}
	if err := s.verdicts.recordLayer(verdictOf(ll.ImageRef, im), target, rec); err != nil {
		return err
	}
	return alreadyExists
}

// commitLazy prepares a staging snapshot, writes the layer record, mounts
// the layer on the snapshot's directory and commits it; on failure nothing
// stays mounted or committed.
func (s *Snapshotter) commitLazy(ctx context.Context, key, parent, target string, ll *LazyLayer, labels map[string]string) (retErr error) {
	upper, err := s.prepareStaging(ctx, key, parent, labels)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			s.removeStaging(ctx, key)
		}
	}()
	if err := writeLazyRecord(upper, ll); err != nil {
		return err
	}
	if err := s.lazy.Mount(ctx, upper, *ll); err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			if err := s.lazy.Unmount(ctx, upper); err != nil {
				log.G(ctx).WithError(err).WithField("dir", upper).Warn("unmount lazy layer")
			}
		}
	}()
	committed := withLabel(labels, label.Lazy, ll.Blob.Digest.String())
	if err := s.Snapshotter.Commit(ctx, target, key, snapshots.WithLabels(committed)); err != nil {
		return fmt.Errorf("commit lazy layer %s as %q: %w", ll.Blob.Digest, target, err)
	}
	return nil
}

func lazyRecordPath(upper string) string { return filepath.Join(filepath.Dir(upper), lazyRecordName) }

func writeLazyRecord(upper string, ll *LazyLayer) error {
	b, err := json.Marshal(ll)
	if err != nil {
		return err
	}
	p := lazyRecordPath(upper)
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("write lazy layer record: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("write lazy layer record: %w", err)
	}
	return nil
}

func readLazyRecord(upper string) (*LazyLayer, error) {
	b, err := os.ReadFile(lazyRecordPath(upper))
	if err != nil {
		return nil, err
	}
	var ll LazyLayer
	if err := json.Unmarshal(b, &ll); err != nil {
		return nil, fmt.Errorf("parse %s: %w", lazyRecordPath(upper), err)
	}
	if ll.TOCDigest.Validate() != nil || ll.Blob.Digest.Validate() != nil || ll.DiffID.Validate() != nil {
		return nil, fmt.Errorf("%s: incomplete lazy layer record", lazyRecordPath(upper))
	}
	return &ll, nil
}

// remountLazy serves again, at start, the committed lazy snapshots found
// on disk. The mounter re-verifies each layer (its TOC against the
// recorded digest from the verified manifest) as on the first mount. A
// layer that cannot be mounted is logged: its snapshot stays, empty, and
// containers on it fail to read it until cocoond is restarted with the
// registry reachable.
func (s *Snapshotter) remountLazy(ctx context.Context) error {
	type entry struct{ name, upper string }
	var found []entry
	err := s.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindCommitted && info.Labels[label.Lazy] != "" {
			found = append(found, entry{info.Name, info.Labels[label.OverlayUpperdir]})
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("scan snapshots: %w", err)
	}
	for _, e := range found {
		l := log.G(ctx).WithField("snapshot", e.name)
		s.setUnmounted(e.name, true)
		if s.lazy == nil {
			l.Error("committed lazy layer found but lazy pull is disabled ([lazy] enable = false): containers on it are refused until it is enabled again")
			continue
		}
		ll, err := readLazyRecord(e.upper)
		if err != nil {
			l.WithError(err).Error("committed lazy layer without a usable record: containers on it are refused; remove the image")
			continue
		}
		if err := s.lazy.Mount(ctx, e.upper, *ll); err != nil {
			l.WithError(err).Error("cannot mount the committed lazy layer again; containers on it are refused while cocoond retries")
			s.retriesWG.Add(1)
			go s.retryMount(context.WithoutCancel(ctx), e.name, e.upper, ll)
			continue
		}
		s.setUnmounted(e.name, false)
		l.WithField("layer", ll.Blob.Digest).Info("committed lazy layer mounted again")
	}
	return nil
}

// retryMount mounts a committed lazy layer again until it works, the
// snapshot is removed or the snapshotter is closed, backing off from one
// second to a minute.
func (s *Snapshotter) retryMount(ctx context.Context, name, upper string, ll *LazyLayer) {
	defer s.retriesWG.Done()
	l := log.G(ctx).WithField("snapshot", name).WithField("layer", ll.Blob.Digest)
	for delay := retryDelay; ; delay = min(2*delay, time.Minute) {
		select {
		case <-s.stop:
			return
		case <-time.After(delay):
		}
		unlock := s.lock(name)
		if !s.exists(ctx, name) {
			unlock()
			s.setUnmounted(name, false)
			return
		}
		err := s.lazy.Mount(ctx, upper, *ll)
		if err == nil {
			s.setUnmounted(name, false)
		}
		unlock()
		if err == nil {
			l.Info("committed lazy layer mounted again")
			return
		}
		l.WithError(err).Warn("committed lazy layer still cannot be mounted")
	}
}

// retryDelay is the first wait of retryMount.
var retryDelay = time.Second

func (s *Snapshotter) setUnmounted(name string, v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v {
		s.unmounted[name] = true
	} else {
		delete(s.unmounted, name)
	}
}

// checkParentsMounted refuses a snapshot on a lazy layer that is not
// mounted: overlayfs would show its empty directory as the layer.
func (s *Snapshotter) checkParentsMounted(ctx context.Context, parent string) error {
	s.mu.Lock()
	none := len(s.unmounted) == 0
	s.mu.Unlock()
	for p := parent; p != "" && !none; {
		s.mu.Lock()
		down := s.unmounted[p]
		s.mu.Unlock()
		if down {
			return fmt.Errorf("layer %s is served lazily but is not mounted (cocoond could not mount it again at start and is retrying; see its log): %w",
				p, errdefs.ErrUnavailable)
		}
		info, err := s.Snapshotter.Stat(ctx, p)
		if err != nil {
			return nil //nolint:nilerr // the overlay snapshotter reports a missing parent itself
		}
		p = info.Parent
	}
	return nil
}

// View returns a read-only view on parent, refused when parent sits on a
// lazy layer that is not mounted.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if s.kata != nil {
		return s.kataView(ctx, key, parent, opts)
	}
	if err := s.checkParentsMounted(ctx, parent); err != nil {
		return nil, err
	}
	return s.Snapshotter.View(ctx, key, parent, opts...)
}

// Close stops the background retries and closes the snapshot store. It
// does not unmount lazy layers: the LazyMounter's owner does.
func (s *Snapshotter) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.retriesWG.Wait()
	return s.Snapshotter.Close()
}

// unmountLazy unmounts the lazy layer of a snapshot about to be removed
// and returns a function that mounts it again (if the removal fails).
func (s *Snapshotter) unmountLazy(ctx context.Context, info snapshots.Info) (func(), error) {
	upper := info.Labels[label.OverlayUpperdir]
	if s.lazy == nil || upper == "" {
		return func() {}, nil
	}
	ll, recErr := readLazyRecord(upper)
	if err := s.lazy.Unmount(ctx, upper); err != nil {
		return nil, fmt.Errorf("unmount lazy layer of snapshot %q: %w", info.Name, err)
	}
	return func() {
		if recErr != nil {
			s.setUnmounted(info.Name, true)
			log.G(ctx).WithError(recErr).WithField("snapshot", info.Name).Error("cannot mount the lazy layer again; containers on it are refused")
			return
		}
		if err := s.lazy.Mount(ctx, upper, *ll); err != nil {
			s.setUnmounted(info.Name, true)
			log.G(ctx).WithError(err).WithField("snapshot", info.Name).Error("cannot mount the lazy layer again; containers on it are refused")
		}
	}, nil
}
