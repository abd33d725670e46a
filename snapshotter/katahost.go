package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/snapshotter/katavolume"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// DefaultKataMountType is the type of the rootfs mount kata-host mode
// returns. The Go runtime leaves a rootfs unmounted on the host and reads
// its io.katacontainers.volume option only when the type is "fuse." followed
// by a name (or path) whose base starts with "nydus-overlayfs"
// (IsNydusRootFSType in kata-containers src/runtime/virtcontainers/kata_agent.go,
// checkAndMount in src/runtime/pkg/containerd-shim-v2/create.go); runtime-rs
// takes any single mount carrying the option (is_guest_pull_volume in
// src/runtime-rs/crates/resource/src/rootfs/mod.rs). containerd mounts a
// "fuse.<name>" type on the host (runc) by running mount.fuse, which runs
// <name>: cocoon's helper is installed as nydus-overlayfs-cocoon, so it
// sits next to nydus's own nydus-overlayfs without replacing it.
const DefaultKataMountType = "fuse." + KataHelperName

// KataHelperName is the mount helper's binary name (cmd/nydus-overlayfs-cocoon).
const KataHelperName = "nydus-overlayfs-cocoon"

// KataHostOptions turn on kata-host mode: image layers carrying the CRI
// labels are recorded as empty committed snapshots without fetching them,
// and rootfs mounts carry a KataVirtualVolume asking the Kata guest to pull
// the image.
type KataHostOptions struct {
	// MountType of the rootfs mount; empty: DefaultKataMountType. An
	// absolute helper path is written "fuse./path/to/nydus-overlayfs-cocoon".
	MountType string
}

// CheckKataMountType refuses a mount type the Kata Go runtime would not
// recognise (it would then mount the rootfs on the host and share it into
// the guest instead of letting the guest pull the image).
func CheckKataMountType(t string) error {
	name, ok := strings.CutPrefix(t, "fuse.")
	if !ok || !strings.HasPrefix(path.Base(name), "nydus-overlayfs") {
		return fmt.Errorf("kata mount type %q: want fuse.<helper> where the helper's base name starts with nydus-overlayfs "+
			"(the Kata Go runtime recognises no other), e.g. %s", t, DefaultKataMountType)
	}
	return nil
}

// KataLabelsError refuses, in kata-host mode, an image layer that comes
// without the CRI labels: containerd would pull and unpack it on the host.
// It wraps errdefs.ErrFailedPrecondition.
type KataLabelsError struct {
	Target  string
	Missing []string
}

func (e *KataLabelsError) Error() string {
	return fmt.Sprintf("image layer %s: Prepare lacks the labels %s; in kata-host mode the Kata guest pulls images, and without them "+
		"containerd would pull the layer on the host. Set disable_snapshot_annotations = false in containerd's CRI images config "+
		"([plugins.\"io.containerd.cri.v1.images\"] on containerd 2.x, [plugins.\"io.containerd.grpc.v1.cri\".containerd] on 1.7), "+
		"or enable_remote_snapshot_annotations = \"true\" in the cocoon proxy plugin's exports for the transfer service; pull through "+
		"the Kata runtime handler (crictl pull --pod-config with the pod annotation io.containerd.cri.runtime-handler, or the pod's "+
		"RuntimeClass); [snapshotter] allow_unlabelled_layers = true in cocoond.toml lets containerd pull such layers on the host: %v",
		e.Target, strings.Join(e.Missing, ", "), errdefs.ErrFailedPrecondition)
}

func (e *KataLabelsError) Unwrap() error { return errdefs.ErrFailedPrecondition }

// orphanedDir is where kata-host mode moves snapshot directories its
// metadata store does not know (under Options.Root).
const orphanedDir = "orphaned"

// moveOrphans moves aside the snapshot directories the metadata store does
// not know: a store lost or restored from an older copy hands out snapshot
// IDs again whose directories still exist, and the overlay snapshotter
// cannot create a snapshot over one. They are moved, not removed: a
// running container may still have one mounted (a rename keeps the mount
// working). The operator removes ROOT/orphaned once those containers are gone.
func (s *Snapshotter) moveOrphans(ctx context.Context, root string) error {
	known := map[string]bool{}
	err := s.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if upper := info.Labels[label.OverlayUpperdir]; upper != "" {
			known[filepath.Base(filepath.Dir(upper))] = true
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: a new, empty store
		return fmt.Errorf("scan snapshots: %w", err)
	}
	dir := filepath.Join(root, "snapshots")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list snapshot directories: %w", err)
	}
	dest := filepath.Join(root, orphanedDir, strconv.FormatInt(time.Now().UnixNano(), 10))
	moved := 0
	for _, e := range ents {
		if known[e.Name()] {
			continue
		}
		if err := os.MkdirAll(dest, 0o700); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(dir, e.Name()), filepath.Join(dest, e.Name())); err != nil {
			return fmt.Errorf("move aside a snapshot directory the metadata store does not know: %w", err)
		}
		moved++
	}
	if moved > 0 {
		log.G(ctx).WithFields(log.Fields{"count": moved, "dir": dest}).
			Warn("the metadata store does not know some snapshot directories (lost or restored from an older copy); moved them aside: remove them once no container uses them")
	}
	return nil
}

// kataPrepare is Prepare in kata-host mode.
func (s *Snapshotter) kataPrepare(ctx context.Context, key, parent string, labels map[string]string, opts []snapshots.Opt) ([]mount.Mount, error) {
	target, isLayer := imageLayerTarget(key, labels)
	if !isLayer {
		if err := s.ensureParent(ctx, parent, labels); err != nil {
			return nil, err
		}
		m, err := s.Snapshotter.Prepare(ctx, key, parent, opts...)
		if err != nil {
			return nil, err
		}
		return s.kataMounts(ctx, parent, m)
	}
	req, missing := guestPullRequest(labels)
	if len(missing) > 0 {
		if s.requireLabels {
			log.G(ctx).WithField("key", key).WithField("target", target).WithField("missing", missing).
				Warn("image layer without CRI target labels refused: containerd would pull it on the host")
			return nil, &KataLabelsError{Target: target, Missing: missing}
		}
		log.G(ctx).WithField("key", key).WithField("target", target).
			Warn("image layer without CRI target labels: containerd pulls and applies it on the host (allow_unlabelled_layers)")
		if err := s.ensureParent(ctx, parent, labels); err != nil {
			return nil, err
		}
		return s.Snapshotter.Prepare(ctx, key, parent, opts...)
	}
	return nil, s.commitMarker(ctx, key, parent, target, req, labels)
}

// commitMarker commits target as an empty layer labelled with the CRI
// labels and reports ErrAlreadyExists, so containerd fetches nothing.
func (s *Snapshotter) commitMarker(ctx context.Context, key, parent, target string, req LayerRequest, labels map[string]string) error {
	alreadyExists := fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	unlock := s.lock(target)
	defer unlock()
	if s.exists(ctx, target) {
		return alreadyExists
	}
	if err := s.ensureParent(ctx, parent, labels); err != nil {
		return err
	}
	if _, err := s.Snapshotter.Prepare(ctx, key, parent, snapshots.WithLabels(withLabel(labels, label.Staging, "true"))); err != nil {
		return fmt.Errorf("prepare layer snapshot %q: %w", key, err)
	}
	committed := withLabel(labels, label.KataHost, req.LayerDigest.String())
	if err := s.Snapshotter.Commit(ctx, target, key, snapshots.WithLabels(committed)); err != nil {
		s.removeStaging(ctx, key)
		if errdefs.IsAlreadyExists(err) && s.exists(ctx, target) {
			return alreadyExists
		}
		return fmt.Errorf("commit layer %s as %q: %w", req.LayerDigest, target, err)
	}
	log.G(ctx).WithFields(log.Fields{"target": target, "layer": req.LayerDigest, "image": req.ImageRef}).
		Debug("layer recorded for guest pull (not fetched)")
	return alreadyExists
}

// ensureParent recreates a parent containerd names but the store lacks
// (metadata lost, or restored from an older copy) as an empty committed
// placeholder, so no Prepare fails with "missing parent". In kata-host mode
// the layers are empty and what the mount needs comes from labels, so the
// placeholder stands for the lost layer; it keeps the image labels of the
// Prepare that needed it.
func (s *Snapshotter) ensureParent(ctx context.Context, parent string, labels map[string]string) error {
	if parent == "" || s.exists(ctx, parent) {
		return nil
	}
	unlock := s.lock(parent)
	defer unlock()
	if s.exists(ctx, parent) {
		return nil
	}
	now := time.Now()
	rec := map[string]string{label.KataRecovered: strconv.FormatInt(now.Unix(), 10)}
	for _, k := range []string{label.CRIImageRef, label.CRIManifestDigest} {
		if v := labels[k]; v != "" {
			rec[k] = v
		}
	}
	tmp := fmt.Sprintf("kata-recover-%d", now.UnixNano())
	if _, err := s.Snapshotter.Prepare(ctx, tmp, "", snapshots.WithLabels(map[string]string{label.Staging: "true"})); err != nil {
		return fmt.Errorf("recreate missing parent %q: %w", parent, err)
	}
	if err := s.Snapshotter.Commit(ctx, parent, tmp, snapshots.WithLabels(rec)); err != nil {
		s.removeStaging(ctx, tmp)
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("recreate missing parent %q: %w", parent, err)
	}
	log.G(ctx).WithField("parent", parent).Warn("parent snapshot missing from the metadata store (lost or restored); recreated as an empty kata-host layer")
	return nil
}

// kataMounts turns the overlay mount of a snapshot on parent into the
// mount Kata's runtimes recognise: DefaultKataMountType (or the configured
// type) with an io.katacontainers.volume option whose image_guest_pull
// volume names the image (source: the CRI image reference) and carries the
// top layer's labels as image_pull metadata. Layers containerd applied
// (another snapshotter's way in, e.g. a pause image unpacked before
// kata-host mode) keep their real lowerdirs, so the helper's plain overlay
// works for runc; when the top one is such a layer the volume says
// label.KataFallback. A bind mount (a
// View on one layer) and parentless snapshots are returned unchanged.
func (s *Snapshotter) kataMounts(ctx context.Context, parent string, m []mount.Mount) ([]mount.Mount, error) {
	if parent == "" || len(m) != 1 || m[0].Type != "overlay" {
		return m, nil
	}
	top, err := s.Snapshotter.Stat(ctx, parent)
	if err != nil {
		return nil, fmt.Errorf("stat parent %q: %w", parent, err)
	}
	marker, ref, err := s.chainKind(ctx, top)
	if err != nil {
		return nil, err
	}
	md := map[string]string{}
	for k, v := range withoutUpperdir(top).Labels {
		if k != label.Staging {
			md[k] = v
		}
	}
	if !marker {
		md[label.KataFallback] = "true"
	}
	if ref == "" {
		// No layer of the chain names its image (a recovered placeholder or
		// layers containerd applied): source must not be empty
		// (runtime-rs), and both runtimes replace it with the pod's image
		// annotation anyway, so the top chain ID stands in.
		ref = top.Name
	}
	opt, err := katavolume.GuestPull(ref, md).Option()
	if err != nil {
		return nil, err
	}
	out := m[0]
	out.Type = s.kata.MountType
	out.Options = append(slices.Clone(out.Options), opt)
	return []mount.Mount{out}, nil
}

// chainKind reports whether the top layer was recorded for guest pull
// (or recovered) and the nearest CRI image reference down the chain. A
// recorded top over layers containerd applied (a base layer shared with
// such an image) is still a guest pull: the guest pulls the whole image.
func (s *Snapshotter) chainKind(ctx context.Context, top snapshots.Info) (marker bool, ref string, err error) {
	marker = top.Labels[label.KataHost] != "" || top.Labels[label.KataRecovered] != ""
	for info := top; ; {
		if ref = info.Labels[label.CRIImageRef]; ref != "" {
			return marker, ref, nil
		}
		next := info.Parent
		if next == "" {
			return marker, "", nil
		}
		if info, err = s.Snapshotter.Stat(ctx, next); err != nil {
			return false, "", fmt.Errorf("stat snapshot %q: %w", next, err)
		}
	}
}

// kataView is View in kata-host mode.
func (s *Snapshotter) kataView(ctx context.Context, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if err := s.ensureParent(ctx, parent, info.Labels); err != nil {
		return nil, err
	}
	m, err := s.Snapshotter.View(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	return s.kataMounts(ctx, parent, m)
}

// Mounts returns the mounts of an active snapshot (in kata-host mode, the
// Kata rootfs mount of kataMounts).
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	m, err := s.Snapshotter.Mounts(ctx, key)
	if err != nil || s.kata == nil {
		return m, err
	}
	info, err := s.Snapshotter.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.kataMounts(ctx, info.Parent, m)
}
