package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/fuseutil"
)

// mount is one served layer and its background fetch.
type mount struct {
	spec    LayerSpec
	layer   *fusefs.Layer
	mounted *fusefs.Mounted
	key     *decrypt.LayerKey // nil for a plain layer; cleared once local
	cancel  context.CancelFunc
	done    chan struct{}
	// localDir holds the completed copy of this mount's layer ("": none).
	localDir string
	// local is the copy a previous server completed, when served from it;
	// open until release (a read may still be using it after Complete).
	local *fusefs.FileBlob
	// slots bounds the background fetches of all mounts (nil: no bound).
	slots chan struct{}

	mu      sync.Mutex
	lazy    bool // no background fetch
	lastErr error
}

func (m *mount) info(dir string) MountInfo {
	mi := MountInfo{Dir: dir, Layer: m.spec.Blob.Digest, ImageRef: m.spec.ImageRef, Encrypted: m.spec.Encrypted}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.layer.Bad() != nil:
		mi.State, mi.Error = StateBad, m.layer.Bad().Error()
	case m.layer.Local():
		mi.State = StateComplete
	case m.lazy:
		mi.State = StateLazy
	default:
		mi.State = StateFetching
	}
	if mi.Error == "" && m.lastErr != nil {
		mi.Error = m.lastErr.Error()
	}
	return mi
}

// release stops the background fetch, unmounts and forgets the key.
func (m *mount) release() error {
	m.cancel()
	<-m.done
	err := m.mounted.Unmount()
	m.layer.Close()
	if m.local != nil {
		m.local.Close()
	}
	if m.key != nil {
		m.key.Clear()
	}
	return err
}

// mount serves spec at dir. A second Mount of the same layer at the same
// directory succeeds without doing anything (a restarted client mounts
// what it remembers).
func (s *server) mount(dir string, spec LayerSpec, keyBytes []byte) (err error) {
	defer clear(keyBytes)
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("mount point %q is not absolute", dir)
	}
	dir = filepath.Clean(dir)
	s.mu.Lock()
	cfg, client, cache, metrics, slots := s.cfg, s.client, s.cache, s.metrics, s.slots
	if old, ok := s.mounts[dir]; ok {
		switch {
		case old.spec.Blob.Digest != spec.Blob.Digest:
			s.mu.Unlock()
			return fmt.Errorf("%s already serves layer %s", dir, old.spec.Blob.Digest)
		case isMounted(dir, spec.Blob.Digest):
			s.mu.Unlock()
			return nil
		}
		// Someone unmounted it behind our back: serve it again.
		delete(s.mounts, dir)
		s.mu.Unlock()
		log.G(s.ctx).WithField("mountpoint", dir).Warn("lazy layer was unmounted by someone else; mounting it again")
		_ = old.release() // its mount is gone already
		s.mu.Lock()
	}
	if _, ok := s.mounts[dir]; ok || s.pending[dir] {
		s.mu.Unlock()
		return fmt.Errorf("%s is being mounted by another request", dir)
	}
	s.pending[dir] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, dir)
		s.mu.Unlock()
	}()
	if client == nil {
		return errors.New("the lazy FUSE server is not configured yet")
	}
	if spec.Encrypted != decrypt.IsEncrypted(spec.Blob.MediaType) {
		return fmt.Errorf("layer %s: encrypted=%v but media type %s", spec.Blob.Digest, spec.Encrypted, spec.Blob.MediaType)
	}
	var key *decrypt.LayerKey
	if spec.Encrypted {
		if key, err = keyFrom(keyBytes); err != nil {
			return fmt.Errorf("layer %s: %w", spec.Blob.Digest, err)
		}
		if key.Layer() != spec.Blob.Digest {
			key.Clear()
			return fmt.Errorf("layer %s: the key shipped is for layer %s", spec.Blob.Digest, key.Layer())
		}
		defer func() {
			if err != nil {
				key.Clear()
			}
		}()
	}
	ctx := log.WithLogger(s.ctx, log.G(s.ctx).WithFields(log.Fields{"mountpoint": dir, "image": spec.ImageRef, "manifest": spec.Manifest}))
	detachStale(ctx, dir)
	src, err := openSource(ctx, client, cfg, dir, spec, key)
	if err != nil {
		return err
	}
	local, _ := src.(*fusefs.FileBlob)
	defer func() {
		if err != nil && local != nil {
			local.Close()
		}
	}()
	layer, err := fusefs.Open(ctx, src, fusefs.Options{Digest: spec.Blob.Digest, TOCDigest: spec.TOCDigest, Cache: cache, CoalesceGap: cfg.CoalesceGap, Metrics: metrics})
	if err != nil {
		return err
	}
	mounted, err := fusefs.Mount(ctx, dir, layer, fusefs.MountOptions{})
	if err != nil {
		layer.Close()
		return err
	}
	bctx, cancel := context.WithCancel(ctx)
	m := &mount{spec: spec, layer: layer, mounted: mounted, key: key, cancel: cancel, done: make(chan struct{}), lazy: cfg.CacheDir == "", localDir: localDir(cfg, dir), local: local, slots: slots}
	s.mu.Lock()
	s.mounts[dir] = m
	serr := s.saveMounts()
	s.mu.Unlock()
	if serr != nil {
		log.G(ctx).WithError(serr).Warn("recording the mount for crash cleanup")
	}
	go m.background(bctx, cfg)
	return nil
}

// localDir is where the completed copy of the layer mounted at dir lives:
// one directory per mount point under CacheDir, so that Unmount drops
// exactly its copy and a new server finds it again ("": no CacheDir).
func localDir(cfg *Config, dir string) string {
	if cfg == nil || cfg.CacheDir == "" {
		return ""
	}
	h := sha256.Sum256([]byte(filepath.Clean(dir)))
	return filepath.Join(cfg.CacheDir, hex.EncodeToString(h[:12]))
}

// isMounted reports whether dir is the mount point of this layer's FUSE
// mount in our mount namespace (fusefs names its source
// cocoon-lazy:<first 12 hex digits of the layer digest>).
func isMounted(dir string, layer digest.Digest) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	source := "cocoon-lazy:" + layer.Encoded()[:min(12, len(layer.Encoded()))]
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) > 4 && len(g) > 1 && unescapeMountinfo(f[4]) == dir && g[1] == source {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// detachStale lazily unmounts whatever is mounted at dir (a FUSE mount
// whose server died answers ENOTCONN to everything); not being a mount
// point is fine.
func detachStale(ctx context.Context, dir string) {
	if fuseutil.DetachStale(dir) {
		log.G(ctx).WithField("mountpoint", dir).Warn("detached a stale mount")
	}
}

// openSource returns the blob to serve spec from: the completed local copy
// of dir's layer when one exists (a server restarted after a crash), else
// the registry, through decryption for an encrypted layer.
func openSource(ctx context.Context, client *registry.Client, cfg *Config, dir string, spec LayerSpec, key *decrypt.LayerKey) (fusefs.Blob, error) {
	if ld := localDir(cfg, dir); ld != "" {
		lb, err := fusefs.OpenFileBlob(filepath.Join(ld, spec.Blob.Digest.Encoded()), spec.Blob.Size)
		if errors.Is(err, fusefs.ErrBadLocalCopy) {
			log.G(ctx).WithError(err).Warn("ignoring the local copy")
			return openRemote(client, spec, key)
		}
		if err == nil {
			log.G(ctx).WithField("layer", spec.Blob.Digest).Info("serving a completed local copy (verified again in the background)")
			return lb, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return openRemote(client, spec, key)
}

// openRemote reads the layer from the registry by range.
func openRemote(client *registry.Client, spec LayerSpec, key *decrypt.LayerKey) (fusefs.Blob, error) {
	repos, err := client.Repositories(spec.ImageRef)
	if err != nil {
		return nil, err
	}
	rb, err := fusefs.NewRegistryBlob(client, repos, spec.Blob)
	if err != nil || key == nil {
		return rb, err
	}
	return key.NewReaderAt(rb)
}

// background prefetches the prioritized files, then completes the layer
// into CacheDir, retrying fetch errors with backoff. Once the layer is
// local the key is no longer needed.
func (m *mount) background(ctx context.Context, cfg *Config) {
	defer close(m.done)
	if cfg.Prefetch {
		if n, err := m.layer.Prefetch(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("prefetch")
		} else if n > 0 {
			log.G(ctx).WithField("bytes", n).Info("prefetched prioritized files")
		}
	}
	if cfg.CacheDir == "" {
		return
	}
	o := fusefs.CompleteOptions{Dir: m.localDir, DiffID: m.spec.DiffID, Concurrency: completeConcurrency, SegmentSize: completeSegment}
	if m.key != nil {
		// The local copy is plaintext (from the registry, or a copy left by
		// a server that died): encrypted back, it must be the ciphertext
		// the manifest and the HMAC name.
		o.Verifier = func() (fusefs.BlobVerifier, error) { return m.key.NewPlaintextVerifier() }
	}
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		err := os.MkdirAll(m.localDir, 0o700)
		if err == nil {
			err = m.complete(ctx, o)
		}
		m.mu.Lock()
		m.lastErr = err
		m.mu.Unlock()
		switch {
		case err == nil:
			if m.key != nil {
				// Reads are local now; only the decrypting view of a
				// completed layer kept the key, and it is unused.
				m.key.Clear()
			}
			return
		case ctx.Err() != nil, m.layer.Bad() != nil:
			return
		case attempt == completeAttempts:
			log.G(ctx).WithError(err).Error("background fetch gave up; the layer stays lazy")
			return
		}
		log.G(ctx).WithError(err).WithField("attempt", attempt).Warn("background fetch failed; retrying")
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff *= 2
	}
}

// complete runs the layer's Complete once a background-fetch slot is free.
func (m *mount) complete(ctx context.Context, o fusefs.CompleteOptions) error {
	if m.slots != nil {
		select {
		case m.slots <- struct{}{}:
			defer func() { <-m.slots }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return m.layer.Complete(ctx, o)
}
