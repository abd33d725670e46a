// Package snapshotter is cocoon's containerd snapshotter. It keeps
// containerd's bookkeeping (active and committed snapshots, overlay mounts,
// one bolt metadata store under the root) and adds guest pull: an
// image-layer Prepare that carries the CRI target labels is answered by
// fetching, verifying and unpacking the layer itself, committing the target
// chain ID and returning ErrAlreadyExists, so containerd never fetches or
// applies the blob.
//
// In kata-host mode (Options.KataHost, on a Kata node's host) it fetches
// nothing: such a Prepare commits an empty layer labelled with the CRI
// labels, and a container's rootfs mount carries a KataVirtualVolume
// (snapshotter/katavolume) asking the Kata guest to pull the image; state
// is derived from labels and the parent chain, so a lost metadata store
// does not break the next Prepare.
//
// The snapshotter does not know image formats: it asks the image pipeline
// (a LayerSource; image/pull through snapshotter/pullsource) for a verified
// staged layer and commits it by rename. It must never commit a layer that
// has not passed every check.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// Options configure a Snapshotter.
type Options struct {
	// Root holds the metadata store and snapshot directories.
	Root string
	// Layers answers guest-pull Prepares; nil disables guest pull (every
	// layer is then applied by containerd).
	Layers LayerSource
	// MountOptions are added to every overlay mount (e.g. redirect_dir=on).
	MountOptions []string
	// RequireLabels refuses an image-layer Prepare that lacks the CRI
	// target labels instead of letting containerd fetch and apply the layer
	// unverified. cocoond sets it when an image security policy is
	// configured, unless allow_unlabelled_layers says otherwise.
	RequireLabels bool
	// Lazy serves image layers whose verified descriptor carries the
	// eStargz TOC digest annotation without fetching them; nil full-pulls
	// every layer. The snapshotter does not close it.
	Lazy LazyMounter
	// KataHost turns on kata-host mode (see KataHostOptions); Layers and
	// Lazy are then unused: the Kata guest pulls images.
	KataHost *KataHostOptions
}

// Snapshotter implements containerd's snapshots.Snapshotter.
type Snapshotter struct {
	snapshots.Snapshotter // overlay bookkeeping
	layers                LayerSource
	requireLabels         bool
	lazy                  LazyMounter
	verdicts              *verdictStore
	kata                  *KataHostOptions

	mu    sync.Mutex
	locks map[string]*chainLock
	// unmounted are committed lazy snapshots not served at the moment
	// (their mount failed at start and is being retried).
	unmounted map[string]bool

	stop      chan struct{} // closed by Close: background retries end
	stopOnce  sync.Once
	retriesWG sync.WaitGroup
}

type chainLock struct {
	mu   sync.Mutex
	refs int
}

// New opens (or creates) the snapshotter under opts.Root and removes what a
// crash may have left half-done: active snapshots created to stage a
// guest-pulled layer.
func New(ctx context.Context, opts Options) (*Snapshotter, error) {
	if opts.Root == "" {
		return nil, errors.New("snapshotter: no root directory")
	}
	var kata *KataHostOptions
	if opts.KataHost != nil {
		k := *opts.KataHost
		if k.MountType == "" {
			k.MountType = DefaultKataMountType
		}
		if err := CheckKataMountType(k.MountType); err != nil {
			return nil, err
		}
		kata = &k
	}
	// The upperdir label tells commitStaged where a staging snapshot's
	// upper directory is, without reading it out of mount options.
	oopts := []overlay.Opt{overlay.WithUpperdirLabel}
	if len(opts.MountOptions) > 0 {
		oopts = append(oopts, overlay.WithMountOptions(opts.MountOptions))
	}
	o, err := overlay.NewSnapshotter(opts.Root, oopts...)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store under %s: %w", opts.Root, err)
	}
	v, err := openVerdicts(opts.Root)
	if err != nil {
		o.Close()
		return nil, err
	}
	s := &Snapshotter{Snapshotter: o, layers: opts.Layers, requireLabels: opts.RequireLabels, lazy: opts.Lazy, verdicts: v, locks: map[string]*chainLock{},
		unmounted: map[string]bool{}, stop: make(chan struct{}), kata: kata}
	if err := s.removeStaleStaging(ctx); err != nil {
		o.Close()
		return nil, err
	}
	if kata != nil {
		if err := s.moveOrphans(ctx, opts.Root); err != nil {
			o.Close()
			return nil, err
		}
	}
	if err := s.remountLazy(ctx); err != nil {
		o.Close()
		return nil, err
	}
	return s, nil
}

func (s *Snapshotter) removeStaleStaging(ctx context.Context) error {
	var stale []string
	err := s.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && info.Labels[label.Staging] == "true" {
			stale = append(stale, info.Name)
			s.unmountStaleLazy(ctx, info.Labels[label.OverlayUpperdir])
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: a new, empty store
		return fmt.Errorf("scan snapshots: %w", err)
	}
	for _, key := range stale {
		if err := s.Snapshotter.Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove half-committed snapshot %q: %w", key, err)
		}
		log.G(ctx).WithField("key", key).Warn("removed a guest-pull snapshot left half-committed by a previous run")
	}
	if len(stale) > 0 {
		if c, ok := s.Snapshotter.(snapshots.Cleaner); ok {
			return c.Cleanup(ctx)
		}
	}
	return nil
}

// unmountStaleLazy detaches what a crash left mounted on a staging
// snapshot of a lazy layer, so that its removal does not walk into it.
func (s *Snapshotter) unmountStaleLazy(ctx context.Context, upper string) {
	if s.lazy == nil || upper == "" {
		return
	}
	if _, err := os.Stat(lazyRecordPath(upper)); err != nil {
		return
	}
	if err := s.lazy.Unmount(ctx, upper); err != nil {
		log.G(ctx).WithError(err).WithField("dir", upper).Warn("unmount a lazy layer left half-committed")
	}
}

// Cleanup removes directories of deleted snapshots.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if c, ok := s.Snapshotter.(snapshots.Cleaner); ok {
		return c.Cleanup(ctx)
	}
	return nil
}

// Prepare creates an active snapshot, or, for an image layer carrying the
// CRI target labels, pulls the layer itself and reports ErrAlreadyExists
// once the target chain ID is committed. An image layer is a Prepare with
// containerd.io/snapshot.ref or an unpack key "extract-<n> <chainID>"
// (imageLayerTarget); a container's writable layer has neither and is
// always prepared. An image layer without the CRI labels is refused
// when RequireLabels is set.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if s.kata != nil {
		return s.kataPrepare(ctx, key, parent, info.Labels, opts)
	}
	target, isLayer := imageLayerTarget(key, info.Labels)
	if !isLayer {
		if err := s.checkParentsMounted(ctx, parent); err != nil {
			return nil, err
		}
		s.warnForeignVerdicts(ctx, key, parent, info.Labels)
		return s.Snapshotter.Prepare(ctx, key, parent, opts...)
	}
	req, missing := guestPullRequest(info.Labels)
	if len(missing) > 0 && s.requireLabels {
		log.G(ctx).WithField("key", key).WithField("target", target).WithField("missing", missing).
			Warn("image layer without CRI target labels refused: the image security policy cannot be checked")
		return nil, &MissingLabelsError{Target: target, Missing: missing}
	}
	if len(missing) > 0 || s.layers == nil {
		log.G(ctx).WithField("key", key).WithField("target", target).
			Info("image layer without CRI target labels: containerd fetches and applies it (normal pull path)")
		return s.Snapshotter.Prepare(ctx, key, parent, opts...)
	}
	return nil, s.guestPull(ctx, key, parent, target, req, info.Labels)
}

// imageLayerTarget tells an image-layer Prepare from a container's: the
// unpacker (transfer service, CRI) labels it with the target chain ID, and
// the client-side unpack (ctr image pull --local, Image.Unpack) names it
// only by its key, snapshots.UnpackKeyFormat ("extract-<unique> <chainID>",
// behind the metadata store's "<namespace>/<id>/" prefix). Container IDs
// cannot contain a space, so a writable layer never matches.
func imageLayerTarget(key string, labels map[string]string) (string, bool) {
	if target, ok := labels[label.TargetSnapshotRef]; ok {
		return target, true
	}
	base := key[strings.LastIndexByte(key, '/')+1:]
	if !strings.HasPrefix(base, snapshots.UnpackKeyPrefix+"-") {
		return "", false
	}
	_, chainID, ok := strings.Cut(base, " ")
	return chainID, ok && chainID != ""
}

// guestPullRequest reads the CRI target labels; missing names those absent.
func guestPullRequest(l map[string]string) (req LayerRequest, missing []string) {
	req = LayerRequest{
		ImageRef:       l[label.CRIImageRef],
		ManifestDigest: digest.Digest(l[label.CRIManifestDigest]),
		LayerDigest:    digest.Digest(l[label.CRILayerDigest]),
		DiffID:         digest.Digest(l[label.DiffID]),
	}
	for _, k := range []string{label.CRIImageRef, label.CRIManifestDigest, label.CRILayerDigest} {
		if l[k] == "" {
			missing = append(missing, k)
		}
	}
	return req, missing
}

// MissingLabelsError refuses an image layer that containerd would fetch and
// apply itself, unverified, because the Prepare lacks the labels that name
// its image. It wraps errdefs.ErrFailedPrecondition.
type MissingLabelsError struct {
	Target  string   // chain ID containerd asked for
	Missing []string // label keys absent from the Prepare
}

func (e *MissingLabelsError) Error() string {
	return fmt.Sprintf("image layer %s: Prepare lacks the labels %s, so cocoond cannot check the image security policy "+
		"and refuses to let containerd apply the layer unverified; pull through the transfer service with the cocoon proxy plugin's "+
		"exports enable_remote_snapshot_annotations = \"true\" (plain `ctr image pull`, not --local), or through CRI with "+
		"disable_snapshot_annotations = false; to allow unverified layers anyway set [snapshotter] allow_unlabelled_layers = true in cocoond.toml: %v",
		e.Target, strings.Join(e.Missing, ", "), errdefs.ErrFailedPrecondition)
}

func (e *MissingLabelsError) Unwrap() error { return errdefs.ErrFailedPrecondition }

func (s *Snapshotter) lock(chainID string) func() {
	s.mu.Lock()
	l, ok := s.locks[chainID]
	if !ok {
		l = &chainLock{}
		s.locks[chainID] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.locks, chainID)
		}
		s.mu.Unlock()
	}
}

func (s *Snapshotter) exists(ctx context.Context, name string) bool {
	_, err := s.Stat(ctx, name)
	return err == nil
}

func (s *Snapshotter) guestPull(ctx context.Context, key, parent, target string, req LayerRequest, labels map[string]string) error {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("target", target).WithField("layer", req.LayerDigest))
	alreadyExists := fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)

	unlock := s.lock(target)
	defer unlock()
	if s.exists(ctx, target) {
		// Committed for another image (or another namespace): this image
		// must pass the policy itself and, for a decrypted layer, name the
		// encrypted blob it came from.
		if err := s.reuse(ctx, target, req); err != nil {
			return err
		}
		log.G(ctx).Debug("layer already committed; image accepted for it")
		return alreadyExists
	}
	if parent != "" && !s.exists(ctx, parent) {
		return fmt.Errorf("parent snapshot %q of layer %s: %w", parent, req.LayerDigest, errdefs.ErrNotFound)
	}
	if s.lazy != nil {
		ll, im, err := s.lazyLayer(ctx, req, target, labels)
		if err != nil {
			return err
		}
		if ll != nil {
			return s.lazyPull(ctx, key, parent, target, ll, im, labels)
		}
	}
	req.Exists = func(ctx context.Context, chainID digest.Digest) bool { return s.exists(ctx, chainID.String()) }
	staged, err := s.layers.Layer(ctx, req)
	if err != nil {
		return fmt.Errorf("guest pull of layer %s for %s: %w", req.LayerDigest, req.ImageRef, err)
	}
	if staged.ChainID.String() != target {
		if derr := staged.Discard(); derr != nil {
			log.G(ctx).WithError(derr).Warn("discard the staged layer")
		}
		return fmt.Errorf("layer %s: chain ID from the verified image config is %s, but containerd asked for %s: %w",
			req.LayerDigest, staged.ChainID, target, errdefs.ErrInvalidArgument)
	}
	if err := s.commitStaged(ctx, key, parent, target, staged, labels); err != nil {
		if derr := staged.Discard(); derr != nil {
			log.G(ctx).WithError(derr).Warn("discard the staged layer")
		}
		if errdefs.IsAlreadyExists(err) && s.exists(ctx, target) {
			return alreadyExists
		}
		return err
	}
	log.G(ctx).WithField("diff_id", staged.DiffID).Info("layer committed")
	if err := s.recordLayer(ctx, req, target, staged); err != nil {
		return err
	}
	return alreadyExists
}

// commitStaged turns a verified staging directory into the committed
// snapshot target: an active snapshot (marked as staging, so a crash leaves
// something start-up recognises) gets the staged directory renamed over its
// empty upper directory, then is committed in one metadata transaction.
func (s *Snapshotter) commitStaged(ctx context.Context, key, parent, target string, staged *StagedLayer, labels map[string]string) (retErr error) {
	upper, err := s.prepareStaging(ctx, key, parent, labels)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			s.removeStaging(ctx, key)
		}
	}()
	if err := os.Remove(upper); err != nil {
		return fmt.Errorf("replace upper directory of %q: %w", key, err)
	}
	if err := os.Rename(staged.Dir, upper); err != nil {
		if merr := os.Mkdir(upper, 0o755); merr != nil {
			log.G(ctx).WithError(merr).Warn("recreate the upper directory")
		}
		return fmt.Errorf("move staged layer into snapshot %q: %w", key, err)
	}
	committed := withLabel(labels, label.GuestPulled, staged.Blob.String())
	if err := s.Snapshotter.Commit(ctx, target, key, snapshots.WithLabels(committed)); err != nil {
		return fmt.Errorf("commit layer %s as %q: %w", staged.Blob, target, err)
	}
	return nil
}

// prepareStaging creates the active snapshot key, marked as staging (so a
// crash leaves something start-up recognises), and returns its upper
// directory.
func (s *Snapshotter) prepareStaging(ctx context.Context, key, parent string, labels map[string]string) (string, error) {
	if _, err := s.Snapshotter.Prepare(ctx, key, parent, snapshots.WithLabels(withLabel(labels, label.Staging, "true"))); err != nil {
		return "", fmt.Errorf("prepare staging snapshot %q: %w", key, err)
	}
	upper, err := s.upperDir(ctx, key)
	if err != nil {
		s.removeStaging(ctx, key)
		return "", err
	}
	return upper, nil
}

// removeStaging removes a staging snapshot whose commit failed.
func (s *Snapshotter) removeStaging(ctx context.Context, key string) {
	if err := s.Snapshotter.Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).WithField("key", key).Warn("remove staging snapshot")
	}
}

// withLabel returns a copy of labels with k set to v.
func withLabel(labels map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(labels)+1)
	for lk, lv := range labels {
		out[lk] = lv
	}
	out[k] = v
	return out
}

// Stat, Update and Walk answer as the overlay snapshotter does, without the
// upperdir label it adds for commitStaged: that path is cocoond's business,
// not its clients'.

// Stat returns the information of a snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	info, err := s.Snapshotter.Stat(ctx, key)
	return withoutUpperdir(info), err
}

// Update updates the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	info, err := s.Snapshotter.Update(ctx, info, fieldpaths...)
	return withoutUpperdir(info), err
}

// Walk calls fn for every snapshot that matches the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	visited := false
	err := s.Snapshotter.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		visited = true
		return fn(ctx, withoutUpperdir(info))
	}, filters...)
	if !visited && errors.Is(err, errdefs.ErrNotFound) {
		// The metadata store creates its buckets with the first snapshot;
		// until then there is nothing to list ("bucket does not exist"
		// would fail `ctr snapshots ls` and containerd's garbage collector).
		return nil
	}
	return err
}

func withoutUpperdir(info snapshots.Info) snapshots.Info {
	delete(info.Labels, label.OverlayUpperdir)
	if len(info.Labels) == 0 {
		info.Labels = nil
	}
	return info
}

// upperDir returns the upper directory of an active snapshot, from the
// label the overlay snapshotter adds to its Info.
func (s *Snapshotter) upperDir(ctx context.Context, key string) (string, error) {
	info, err := s.Snapshotter.Stat(ctx, key)
	if err != nil {
		return "", fmt.Errorf("stat staging snapshot %q: %w", key, err)
	}
	upper := info.Labels[label.OverlayUpperdir]
	if upper == "" {
		return "", fmt.Errorf("staging snapshot %q has no %s label", key, label.OverlayUpperdir)
	}
	return upper, nil
}
