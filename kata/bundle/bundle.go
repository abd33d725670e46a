// Package bundle pulls an image into an OCI bundle for the Kata agent, as
// image-rs does behind the Confidential Data Hub's PullImage(image_url,
// bundle_path): the image's layers, overlaid, are mounted at
// <bundle>/rootfs, and <bundle>/config.json is the runtime config generated
// from the image config; the answer is the platform manifest digest.
//
// It pulls nothing itself. It drives cocoon's snapshotter in process exactly
// as containerd's unpacker drives a remote snapshotter: one Prepare per
// layer with the labels CRI sets, expecting ErrAlreadyExists. So the image
// security policy (checked per image, also for layers already committed),
// signatures, decryption, verified staging, lazy eStargz layers, verdicts
// and the layer store shared with containerd's pulls are the snapshotter's
// code; the bundle's rootfs is an active snapshot on the image's top layer.
//
// It must never leave a mount, an active snapshot or bundle content behind
// after a pull that failed or was refused.
package bundle

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/signature"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
)

// Names inside a bundle (image-rs's BUNDLE_ROOTFS and BUNDLE_CONFIG).
const (
	rootfsDir  = "rootfs"
	configFile = "config.json"
)

// keyPrefix prefixes the active snapshot key of every bundle; the rest is
// the SHA-256 of the bundle path, so a bundle's snapshot is found from its
// path alone, also after a restart.
const keyPrefix = "cocoon-bundle/"

// labelParentChainID is the label containerd's unpacker gives the parent
// chain ID of a layer after the first.
const labelParentChainID = "containerd.io/snapshot/parent-chain-id"

// Options configure a Puller.
type Options struct {
	// Snapshotter is cocoon's snapshotter with guest pull enabled
	// (snapshotter.New with a LayerSource): every layer Prepare must come
	// back as ErrAlreadyExists. If it also has Admit(ctx, ref, manifest)
	// (cocoon's does), the image is admitted before its rootfs is mounted,
	// as the NRI plugin admits a container's image.
	Snapshotter snapshots.Snapshotter
	// Registry resolves tags and fetches the verified manifest and config
	// (the snapshotter's pipeline should use the same client).
	Registry *registry.Client
}

// admitter is the snapshotter's per-image admission check
// (snapshotter.Snapshotter.Admit).
type admitter interface {
	Admit(ctx context.Context, ref string, dgst digest.Digest) error
}

// Puller makes bundles. It is safe for concurrent use; one bundle path is
// worked on by one call at a time.
type Puller struct {
	sn snapshots.Snapshotter
	rc *registry.Client

	mu   sync.Mutex
	busy map[string]bool // snapshot keys of pulls and removals in progress
}

// New returns a Puller.
func New(opts Options) (*Puller, error) {
	if opts.Snapshotter == nil {
		return nil, errors.New("bundle: no snapshotter")
	}
	if opts.Registry == nil {
		return nil, errors.New("bundle: no registry client")
	}
	return &Puller{sn: opts.Snapshotter, rc: opts.Registry, busy: map[string]bool{}}, nil
}

// PullImage pulls imageURL (by tag or digest; docker.io names normalised as
// containerd and image-rs do) into the bundle at bundlePath, which must be
// an absolute path; it and its rootfs directory are created if missing.
// It returns the digest of the platform manifest (the reply's
// manifest_digest; the signature is kata/cdh's ImagePuller). A failure
// after the arguments are checked is a *PullError. On any failure,
// including a refusal by the image security policy, nothing it created is
// left: no mount, no active snapshot, no config.json, no directory.
// Layers committed before the failure stay in the layer store, verified,
// as they do after a failed containerd pull.
func (p *Puller) PullImage(ctx context.Context, imageURL, bundlePath string) (manifestDigest string, err error) {
	start := time.Now()
	bundlePath, err = cleanBundlePath(bundlePath)
	if err != nil {
		return "", err
	}
	named, err := reference.ParseDockerRef(imageURL)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", imageURL, err, errdefs.ErrInvalidArgument)
	}
	ref := named.String()
	key := bundleKey(bundlePath)
	release, err := p.claim(key, bundlePath)
	if err != nil {
		return "", err
	}
	defer release()
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"image": ref, "bundle": bundlePath}))
	if err := p.Prune(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("prune bundles whose rootfs is gone")
	}
	im, err := p.pull(ctx, key, ref, named, bundlePath)
	if err != nil {
		log.G(ctx).WithError(err).Warn("pull into bundle failed; nothing of the bundle is left")
		return "", &PullError{Image: imageURL, Ref: ref, Err: err}
	}
	log.G(ctx).WithFields(log.Fields{"manifest": im.ManifestDigest, "layers": len(im.Manifest.Layers), "duration": time.Since(start)}).Info("image pulled into bundle")
	return im.ManifestDigest.String(), nil
}

// pull does the work of PullImage once the arguments are checked.
func (p *Puller) pull(ctx context.Context, key, ref string, named reference.Named, bundlePath string) (*registry.Image, error) {
	if err := p.checkFree(ctx, key, bundlePath); err != nil {
		return nil, err
	}
	im, err := p.resolve(ctx, named)
	if err != nil {
		return nil, err
	}
	if im.Config.OS != "linux" {
		return nil, fmt.Errorf("image %s@%s: unsupported OS image %q: %w", ref, im.ManifestDigest, im.Config.OS, errdefs.ErrNotImplemented)
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), im.Config.RootFS.DiffIDs...))
	if err := p.unpack(ctx, ref, im, chain); err != nil {
		return nil, err
	}
	if a, ok := p.sn.(admitter); ok {
		if err := a.Admit(ctx, ref, im.ManifestDigest); err != nil {
			return nil, fmt.Errorf("admit image %s@%s: %w", ref, im.ManifestDigest, err)
		}
	}
	top := ""
	if len(chain) > 0 {
		top = chain[len(chain)-1].String()
	}
	if err := p.create(ctx, key, ref, bundlePath, top, im); err != nil {
		return nil, err
	}
	return im, nil
}

// PullError is a pull that failed after its arguments were accepted. Its
// message has image-rs's shape, which CDH puts after "Image Pull error: ":
// "Failed to pull image <image_url> from all mirror/mapping locations or
// original location: image: <reference>, error: <cause>", the cause being
// upstream's own message for a policy refusal ("Image policy rejected:
// Denied by policy: ..."). It unwraps to the full error (errdefs classes
// included: a refusal is ErrPermissionDenied).
type PullError struct {
	Image string // image_url as the caller gave it
	Ref   string // the normalised reference
	Err   error
}

func (e *PullError) Error() string {
	cause := e.Err.Error()
	var rej *signature.RejectedError
	if errors.As(e.Err, &rej) {
		cause = rej.Error()
	}
	return fmt.Sprintf("Failed to pull image %s from all mirror/mapping locations or original location: image: %s, error: %s", e.Image, e.Ref, cause)
}

func (e *PullError) Unwrap() error { return e.Err }

// cleanBundlePath returns the cleaned absolute bundle path.
func cleanBundlePath(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("bundle path %q is not absolute: %w", p, errdefs.ErrInvalidArgument)
	}
	p = filepath.Clean(p)
	if p == "/" {
		return "", fmt.Errorf("bundle path %q: %w", p, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

func bundleKey(bundlePath string) string {
	h := sha256.Sum256([]byte(bundlePath))
	return keyPrefix + hex.EncodeToString(h[:])
}

// claim marks key busy until release is called.
func (p *Puller) claim(key, bundlePath string) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy[key] {
		return nil, fmt.Errorf("bundle %s: another pull or removal is in progress: %w", bundlePath, errdefs.ErrUnavailable)
	}
	p.busy[key] = true
	return func() {
		p.mu.Lock()
		delete(p.busy, key)
		p.mu.Unlock()
	}, nil
}

func (p *Puller) isBusy(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy[key]
}

// checkFree refuses a bundle that already holds an image, a config.json, a
// mounted or non-empty rootfs, before anything is fetched.
func (p *Puller) checkFree(ctx context.Context, key, bundlePath string) error {
	if _, err := p.sn.Stat(ctx, key); err == nil {
		return fmt.Errorf("bundle %s already holds a pulled image (remove it first): %w", bundlePath, errdefs.ErrAlreadyExists)
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	if st, err := os.Stat(bundlePath); err == nil && !st.IsDir() {
		return fmt.Errorf("bundle path %s is not a directory: %w", bundlePath, errdefs.ErrInvalidArgument)
	}
	cfg := filepath.Join(bundlePath, configFile)
	if _, err := os.Lstat(cfg); err == nil {
		return fmt.Errorf("OCI config file already exists: %s: %w", cfg, errdefs.ErrAlreadyExists)
	}
	rootfs := filepath.Join(bundlePath, rootfsDir)
	if mounted(rootfs) {
		return fmt.Errorf("bundle rootfs %s is already a mount point: %w", rootfs, errdefs.ErrAlreadyExists)
	}
	if entries, err := os.ReadDir(rootfs); err == nil && len(entries) > 0 {
		return fmt.Errorf("bundle rootfs %s is not empty: %w", rootfs, errdefs.ErrAlreadyExists)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bundle rootfs %s: %w", rootfs, err)
	}
	return nil
}

// resolve fetches the verified platform manifest and config the reference
// names, by digest (a tag is resolved first), from the locations the
// registries configuration gives.
func (p *Puller) resolve(ctx context.Context, named reference.Named) (*registry.Image, error) {
	repos, err := p.rc.Repositories(named.String())
	if err != nil {
		return nil, err
	}
	var dgst digest.Digest
	switch r := named.(type) {
	case reference.Canonical:
		dgst = r.Digest()
	case reference.Tagged:
		if dgst, err = p.rc.ResolveTag(ctx, repos, r.Tag()); err != nil {
			return nil, fmt.Errorf("resolve image %s: %w", named, err)
		}
	default:
		return nil, fmt.Errorf("image reference %s has neither tag nor digest: %w", named, errdefs.ErrInvalidArgument)
	}
	im, err := p.rc.ImageFrom(ctx, repos, dgst)
	if err != nil {
		return nil, fmt.Errorf("fetch image %s: %w", named, err)
	}
	return im, nil
}

// layerDescriptors returns the manifest's layers annotated as containerd's
// CRI image handler annotates them (snapshotters.AppendInfoHandlerWrapper:
// image ref, manifest digest, layer digest, following layers).
func layerDescriptors(ctx context.Context, ref string, im *registry.Image) ([]ocispec.Descriptor, error) {
	mt := im.Manifest.MediaType
	if mt == "" {
		mt = ocispec.MediaTypeImageManifest
	}
	children := func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		out := make([]ocispec.Descriptor, len(im.Manifest.Layers))
		for i, l := range im.Manifest.Layers {
			out[i] = l
			out[i].Annotations = make(map[string]string, len(l.Annotations))
			for k, v := range l.Annotations {
				out[i].Annotations[k] = v
			}
		}
		return out, nil
	}
	h := snapshotters.AppendInfoHandlerWrapper(ref)(images.HandlerFunc(children))
	return h.Handle(ctx, ocispec.Descriptor{MediaType: mt, Digest: im.ManifestDigest})
}

// unpack prepares every layer in order, as containerd's unpacker does for
// a remote snapshotter: labels from the layer's annotations (containerd's
// inherited ones, uid/gid mappings dropped), the target chain ID, diff ID
// and parent chain ID; ErrAlreadyExists means the snapshotter committed
// (or, after checking this image, reused) the layer.
func (p *Puller) unpack(ctx context.Context, ref string, im *registry.Image, chain []digest.Digest) error {
	layers, err := layerDescriptors(ctx, ref, im)
	if err != nil {
		return err
	}
	diffIDs := im.Config.RootFS.DiffIDs
	for i, desc := range layers {
		labels := snapshots.FilterInheritedLabels(desc.Annotations)
		if labels == nil || labels[label.CRILayerDigest] == "" {
			return fmt.Errorf("image %s@%s: layer %d has media type %q, which is not a layer: %w", ref, im.ManifestDigest, i, desc.MediaType, errdefs.ErrNotImplemented)
		}
		delete(labels, snapshots.LabelSnapshotUIDMapping)
		delete(labels, snapshots.LabelSnapshotGIDMapping)
		labels[label.TargetSnapshotRef] = chain[i].String()
		labels[label.DiffID] = diffIDs[i].String()
		parent := ""
		if i > 0 {
			parent = chain[i-1].String()
			labels[labelParentChainID] = parent
		}
		if err := p.prepareLayer(ctx, parent, chain[i].String(), labels); err != nil {
			return fmt.Errorf("layer %d (%s) of %s@%s: %w", i, desc.Digest, ref, im.ManifestDigest, err)
		}
	}
	return nil
}

func (p *Puller) prepareLayer(ctx context.Context, parent, chainID string, labels map[string]string) error {
	for try := 1; try <= 3; try++ {
		key := fmt.Sprintf(snapshots.UnpackKeyFormat, uniquePart(), chainID)
		_, err := p.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
		switch {
		case errdefs.IsAlreadyExists(err):
			_, serr := p.sn.Stat(ctx, chainID)
			if serr == nil {
				return nil
			}
			if !errdefs.IsNotFound(serr) {
				return fmt.Errorf("stat committed layer %s: %w", chainID, serr)
			}
			// Removed between commit and Stat (containerd retries too).
		case err != nil:
			return err
		default:
			// An active snapshot for the caller to apply the layer into:
			// guest pull is off, and nothing here applies unverified blobs.
			if rerr := p.sn.Remove(ctx, key); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("key", key).Warn("remove the extraction snapshot")
			}
			return fmt.Errorf("the snapshotter did not pull the layer itself (is guest pull enabled?): %w", errdefs.ErrFailedPrecondition)
		}
	}
	return fmt.Errorf("committed layer %s disappeared three times: %w", chainID, errdefs.ErrNotFound)
}

// uniquePart is containerd's unpack key uniquifier: nanoseconds and three
// random bytes.
func uniquePart() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return fmt.Sprintf("%d-%s", time.Now().Nanosecond(), base64.URLEncoding.EncodeToString(b[:]))
}

// create makes the bundle: directories, the active snapshot on top, its
// overlay mounted at rootfs, config.json. On failure it undoes each step.
func (p *Puller) create(ctx context.Context, key, ref, bundlePath, top string, im *registry.Image) (retErr error) {
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	made, err := mkdirAll(bundlePath)
	if err != nil {
		return fmt.Errorf("create bundle directory: %w", err)
	}
	undo = append(undo, func() { removeDirs(ctx, made) })
	rootfs := filepath.Join(bundlePath, rootfsDir)
	if err := os.Mkdir(rootfs, 0o755); err == nil {
		undo = append(undo, func() { removeDirs(ctx, []string{rootfs}) })
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create bundle rootfs: %w", err)
	}

	mounts, err := p.sn.Prepare(ctx, key, top, snapshots.WithLabels(map[string]string{label.Bundle: bundlePath, label.CRIImageRef: ref}))
	if err != nil {
		return fmt.Errorf("prepare the bundle's rootfs snapshot: %w", err)
	}
	undo = append(undo, func() {
		if err := p.sn.Remove(context.WithoutCancel(ctx), key); err != nil {
			log.G(ctx).WithError(err).WithField("key", key).Error("remove the rootfs snapshot of a failed bundle")
		}
	})
	if err := mount.All(mounts, rootfs); err != nil {
		return fmt.Errorf("mount the bundle rootfs at %s: %w", rootfs, err)
	}
	undo = append(undo, func() {
		if err := mount.UnmountAll(rootfs, 0); err != nil {
			log.G(ctx).WithError(err).WithField("rootfs", rootfs).Error("unmount the rootfs of a failed bundle")
		}
	})

	user, err := resolveUser(rootfs, im.Config.Config.User)
	if err != nil {
		return fmt.Errorf("image %s@%s: %w: %w", ref, im.ManifestDigest, err, errdefs.ErrInvalidArgument)
	}
	spec, err := runtimeSpec(&im.Config, user)
	if err != nil {
		return err
	}
	cfg := filepath.Join(bundlePath, configFile)
	if err := writeConfig(cfg, spec); err != nil {
		return err
	}
	return nil
}

// writeConfig writes config.json, refusing to replace one, and leaves
// nothing behind when it fails.
func writeConfig(path string, spec *specs.Spec) (retErr error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("OCI config file already exists: %s: %w", path, errdefs.ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err := f.Close(); err != nil && retErr == nil {
			retErr = fmt.Errorf("write %s: %w", path, err)
		}
		if retErr != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// mkdirAll creates path and any missing parents, returning the directories
// it created, deepest first.
func mkdirAll(path string) ([]string, error) {
	var missing []string
	for d := path; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeDirs removes directories this package created, if empty.
func removeDirs(ctx context.Context, dirs []string) {
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("dir", d).Warn("remove a directory of a failed bundle")
		}
	}
}

// mounted reports whether path is a mount point (false if it is missing).
func mounted(path string) bool {
	ok, err := mountinfo.Mounted(path)
	return err == nil && ok
}

// Remove undoes PullImage for bundlePath: it unmounts the rootfs (failing,
// with nothing removed, while a container still uses it), removes
// config.json and the rootfs directory, and removes the rootfs snapshot.
// The layers stay in the layer store for later pulls. A bundle that holds
// no pulled image is left alone (nil).
func (p *Puller) Remove(ctx context.Context, bundlePath string) error {
	bundlePath, err := cleanBundlePath(bundlePath)
	if err != nil {
		return err
	}
	key := bundleKey(bundlePath)
	release, err := p.claim(key, bundlePath)
	if err != nil {
		return err
	}
	defer release()
	if _, err := p.sn.Stat(ctx, key); errdefs.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	rootfs := filepath.Join(bundlePath, rootfsDir)
	if mounted(rootfs) {
		if err := mount.UnmountAll(rootfs, 0); err != nil {
			return fmt.Errorf("unmount bundle rootfs %s: %w", rootfs, err)
		}
	}
	for _, f := range []string{filepath.Join(bundlePath, configFile), rootfs} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", f, err)
		}
	}
	if err := p.sn.Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove the rootfs snapshot of bundle %s: %w", bundlePath, err)
	}
	log.G(ctx).WithField("bundle", bundlePath).Info("bundle removed")
	return nil
}

// Prune removes the rootfs snapshots of bundles whose rootfs is no longer
// mounted: the Kata agent tears a container down by unmounting the rootfs
// and deleting the bundle (upstream has no call to undo a pull), which
// would otherwise leave the snapshot, and the layers under it, for ever.
// PullImage prunes first; call it at start-up too.
func (p *Puller) Prune(ctx context.Context) error {
	type stale struct{ key, bundle string }
	var found []stale
	err := p.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if b := info.Labels[label.Bundle]; b != "" && info.Kind == snapshots.KindActive {
			found = append(found, stale{info.Name, b})
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: a new, empty store
		return fmt.Errorf("list bundle snapshots: %w", err)
	}
	var errs []error
	for _, s := range found {
		if p.isBusy(s.key) || mounted(filepath.Join(s.bundle, rootfsDir)) {
			continue
		}
		release, err := p.claim(s.key, s.bundle)
		if err != nil {
			continue // a pull or removal started meanwhile
		}
		if !mounted(filepath.Join(s.bundle, rootfsDir)) {
			if err := p.sn.Remove(ctx, s.key); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove the rootfs snapshot of gone bundle %s: %w", s.bundle, err))
			} else {
				log.G(ctx).WithField("bundle", s.bundle).Info("removed the rootfs snapshot of a bundle whose rootfs is no longer mounted")
			}
		}
		release()
	}
	return errors.Join(errs...)
}
