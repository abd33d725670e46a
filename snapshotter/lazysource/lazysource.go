// Package lazysource is the in-process snapshotter.LazyMounter: it serves
// verified eStargz layers with fusefs over the registry client (and, for an
// encrypted layer, image/decrypt's random-access reader), prefetches the
// files the layer's builder prioritized, and completes each blob in the
// background into a local copy that is checked before it is used.
//
// Its FUSE servers live in cocoond's process: they stop when it stops, and a
// restarted cocoond mounts the committed layers again (the snapshotter asks
// it to). Every check stays in fusefs and image/decrypt; this package only
// composes them.
package lazysource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/fuseutil"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

// Options configure a Mounter.
type Options struct {
	Registry *registry.Client
	// Decrypt unwraps the keys of encrypted layers (the KBS, local keys),
	// as for full pulls.
	Decrypt decrypt.Options
	// CacheDir holds the local copies of completed blobs (one directory per
	// mount). It should be on the encrypted storage volume when there is
	// one; otherwise it is guest memory or the guest's root disk.
	CacheDir string
	// CacheBytes bounds the verified-chunk memory cache shared by all
	// layers (default fusefs.DefaultCacheBytes).
	CacheBytes int64
	// CoalesceGap is fusefs.Options.CoalesceGap (0: its default).
	CoalesceGap int64
	// Prefetch fetches the prioritized files of each layer right after it
	// is mounted.
	Prefetch bool
	// Background completes each blob into CacheDir after the mount (and
	// after the prefetch), verifying its digest (for an encrypted layer:
	// the ciphertext digest and HMAC) and diff ID; reads are then local.
	Background bool
	// Concurrency bounds the background completions running at once
	// (default 2).
	Concurrency int
	Metrics     *fusefs.Metrics
}

// Mounter is the in-process LazyMounter. It is safe for concurrent use.
type Mounter struct {
	opts  Options
	cache *fusefs.ChunkCache
	sem   chan struct{}

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	mounts map[string]*served // by mount directory
}

var _ snapshotter.LazyMounter = (*Mounter)(nil)

// served is one mounted layer and its background work.
type served struct {
	layer    *fusefs.Layer
	mnt      *fusefs.Mounted
	key      *decrypt.LayerKey // nil for a plain layer
	file     *fusefs.FileBlob  // the local copy read from, if any
	localDir string
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns a Mounter; Close unmounts what it serves.
func New(opts Options) (*Mounter, error) {
	if opts.Registry == nil {
		return nil, errors.New("lazysource: no registry client")
	}
	if opts.CacheDir == "" {
		return nil, errors.New("lazysource: no cache directory")
	}
	if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("lazysource: cache directory: %w", err)
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = fusefs.DefaultCacheBytes
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Mounter{
		opts: opts, cache: fusefs.NewChunkCache(opts.CacheBytes), sem: make(chan struct{}, opts.Concurrency),
		ctx: ctx, cancel: cancel, mounts: map[string]*served{},
	}, nil
}

// localDir is where the local copy of the layer mounted at dir lives: one
// directory per mount point, so that Unmount drops exactly its copy and a
// restart finds it again.
func (m *Mounter) localDir(dir string) string {
	h := sha256.Sum256([]byte(filepath.Clean(dir)))
	return filepath.Join(m.opts.CacheDir, hex.EncodeToString(h[:12]))
}

// Mount opens the layer (from its verified local copy when a previous
// completion left one, else from the registry), which checks its TOC
// against l.TOCDigest, mounts it at dir and starts the prefetch and the
// background completion.
func (m *Mounter) Mount(ctx context.Context, dir string, l snapshotter.LazyLayer) (retErr error) {
	m.mu.Lock()
	_, busy := m.mounts[dir]
	m.mu.Unlock()
	if busy {
		return fmt.Errorf("lazysource: %s is already served", dir)
	}
	detachStale(ctx, dir)
	s := &served{localDir: m.localDir(dir), done: make(chan struct{})}
	if err := os.MkdirAll(s.localDir, 0o700); err != nil {
		return fmt.Errorf("lazysource: %w", err)
	}
	blob, local, err := m.blob(ctx, l, s)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			s.release()
		}
	}()
	s.layer, err = fusefs.Open(ctx, blob, fusefs.Options{
		Digest: l.Blob.Digest, TOCDigest: l.TOCDigest, Cache: m.cache,
		CoalesceGap: m.opts.CoalesceGap, Metrics: m.opts.Metrics,
	})
	if err != nil {
		return fmt.Errorf("layer %s (TOC digest %s from the verified manifest): %w", l.Blob.Digest, l.TOCDigest, err)
	}
	if s.mnt, err = fusefs.Mount(ctx, dir, s.layer, fusefs.MountOptions{}); err != nil {
		s.layer.Close()
		return err
	}
	bctx, cancel := context.WithCancel(m.ctx)
	s.cancel = cancel
	m.mu.Lock()
	m.mounts[dir] = s
	m.mu.Unlock()
	go m.background(log.WithLogger(bctx, log.G(ctx)), s, l, local)
	return nil
}

// blob returns what the layer is read from: the local copy, or the
// registry (through the decrypting reader for an encrypted layer, whose
// key is unwrapped here, once).
func (m *Mounter) blob(ctx context.Context, l snapshotter.LazyLayer, s *served) (fusefs.Blob, bool, error) {
	if fb, err := fusefs.OpenFileBlob(filepath.Join(s.localDir, l.Blob.Digest.Encoded()), 0); err == nil {
		log.G(ctx).WithField("layer", l.Blob.Digest).Info("lazy layer: serving the local copy a previous completion verified")
		s.file = fb
		return fb, true, nil
	} else if errors.Is(err, fusefs.ErrBadLocalCopy) {
		return nil, false, err
	}
	repos, err := m.opts.Registry.Repositories(l.ImageRef)
	if err != nil {
		return nil, false, err
	}
	rb, err := fusefs.NewRegistryBlob(m.opts.Registry, repos, l.Blob)
	if err != nil {
		return nil, false, err
	}
	if !l.Encrypted {
		return rb, false, nil
	}
	if s.key, err = decrypt.UnwrapLayer(ctx, l.Blob, m.opts.Decrypt); err != nil {
		return nil, false, err
	}
	ra, err := s.key.NewReaderAt(rb)
	if err != nil {
		s.key.Clear()
		return nil, false, err
	}
	return ra, false, nil
}

// background prefetches the prioritized files, then completes the blob
// (at most Options.Concurrency at a time).
func (m *Mounter) background(ctx context.Context, s *served, l snapshotter.LazyLayer, local bool) {
	defer close(s.done)
	lg := log.G(ctx).WithField("layer", l.Blob.Digest)
	if m.opts.Prefetch && !local {
		if n, err := s.layer.Prefetch(ctx); err != nil && ctx.Err() == nil {
			lg.WithError(err).Warn("lazy layer: prefetch of prioritized files failed; they are fetched on demand")
		} else if n > 0 {
			lg.WithField("bytes", n).Info("lazy layer: prioritized files prefetched")
		}
	}
	if !m.opts.Background || local {
		return
	}
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-m.sem }()
	o := fusefs.CompleteOptions{Dir: s.localDir, DiffID: l.DiffID}
	if s.key != nil {
		// The local copy is plaintext: encrypted back, it must be the
		// ciphertext the manifest and the HMAC name.
		o.Verifier = func() (fusefs.BlobVerifier, error) { return s.key.NewPlaintextVerifier() }
	}
	if err := s.layer.Complete(ctx, o); err != nil {
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, fusefs.ErrLayerBad) {
			lg.WithError(err).Error("lazy layer marked bad: every read of it fails with EIO")
			return
		}
		lg.WithError(err).Warn("lazy layer: background completion failed; reads stay remote")
	}
}

// Unmount stops the background work, unmounts dir and removes the local
// copy. A directory this Mounter does not serve is detached if something
// (a previous process) left it mounted.
func (m *Mounter) Unmount(ctx context.Context, dir string) error {
	m.mu.Lock()
	s, ok := m.mounts[dir]
	delete(m.mounts, dir)
	m.mu.Unlock()
	if ok {
		if err := m.stop(s); err != nil {
			return err
		}
	} else {
		detachStale(ctx, dir)
	}
	if err := os.RemoveAll(m.localDir(dir)); err != nil {
		return fmt.Errorf("lazysource: drop the local copy of %s: %w", dir, err)
	}
	return nil
}

func (m *Mounter) stop(s *served) error {
	s.cancel()
	<-s.done
	err := s.mnt.Unmount()
	s.layer.Close()
	s.release()
	return err
}

// release clears the layer key and closes the local copy.
func (s *served) release() {
	if s.key != nil {
		s.key.Clear()
	}
	if s.file != nil {
		s.file.Close()
	}
}

// Close unmounts every layer, keeping the local copies for the next start.
func (m *Mounter) Close() error {
	m.cancel()
	m.mu.Lock()
	all := m.mounts
	m.mounts = map[string]*served{}
	m.mu.Unlock()
	var errs []error
	for _, s := range all {
		errs = append(errs, m.stop(s))
	}
	return errors.Join(errs...)
}

// detachStale lazily unmounts whatever is mounted at dir (a FUSE mount
// whose server died with a previous cocoond answers ENOTCONN to
// everything); not being a mount point is fine.
func detachStale(ctx context.Context, dir string) {
	if fuseutil.DetachStale(dir) {
		log.G(ctx).WithField("dir", dir).Warn("detached a lazy layer mount left by a previous run")
	}
}
