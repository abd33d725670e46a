package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/fusefs/server"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/lazysource"
)

// lazyServerDir is the detached lazy FUSE server's state directory under
// cocoond's root: its socket path must fit a unix socket address, which
// server.Connect checks.
const lazyServerDir = "lazy-server"

// newLazy builds the lazy mounter when [lazy] enables it (nil otherwise):
// by default a client of the detached lazy FUSE server, whose mounts
// outlive cocoond (Close only drops the connections); with detached =
// false the in-process lazysource, whose layers Close unmounts.
func (d *Daemon) newLazy(ctx context.Context, storage string, deps pipelineDeps) (snapshotter.LazyMounter, error) {
	lc := d.cfg.Lazy
	if !lc.Enable {
		return nil, nil
	}
	sizes, _ := lc.sizes()
	fields := log.Fields{"prefetch": lc.Prefetch, "background_completion": lc.BackgroundCompletion, "cache_size": lc.CacheSize, "detached": lc.Detached}
	cacheDir := filepath.Join(storage, "lazy")
	if lc.Detached {
		m, err := d.newLazyServer(ctx, cacheDir, sizes, deps)
		if err != nil {
			return nil, err
		}
		pid, _ := m.c.ServerPID()
		fields["server_pid"] = pid
		log.G(ctx).WithFields(fields).Info("lazy pull of eStargz layers enabled; the detached lazy FUSE server serves the mounts")
		return m, nil
	}
	fm, err := fusefs.NewMetrics(d.metrics)
	if err != nil {
		return nil, err
	}
	m, err := lazysource.New(lazysource.Options{
		Registry: deps.client, Decrypt: deps.decrypt, CacheDir: cacheDir,
		CacheBytes: sizes.cache, CoalesceGap: sizes.gap, Prefetch: lc.Prefetch,
		Background: lc.BackgroundCompletion, Concurrency: lc.CompletionConcurrency, Metrics: fm,
	})
	if err != nil {
		return nil, err
	}
	d.onClose(func() {
		if err := m.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("unmount lazy layers")
		}
	})
	log.G(ctx).WithFields(fields).Info("lazy pull of eStargz layers enabled; cocoond serves the mounts in process (they stop with it)")
	return m, nil
}

// newLazyServer connects to (or starts) the root's lazy FUSE server and
// configures it with the registry settings of cocoond's registry client.
func (d *Daemon) newLazyServer(ctx context.Context, cacheDir string, sizes lazySizes, deps pipelineDeps) (*lazyServer, error) {
	lc := d.cfg.Lazy
	c, err := server.Connect(ctx, server.Options{
		StateDir: filepath.Join(d.root, lazyServerDir),
		Key:      server.UnwrapWith(deps.decrypt),
	})
	if err != nil {
		return nil, err
	}
	ro := deps.registry
	cfg := server.Config{
		Insecure: ro.Insecure, Network: ro.Network, Hosts: ro.Hosts,
		Retries: ro.Retries, RetryBackoff: int64(ro.RetryBackoff),
		CacheBytes: sizes.cache, CoalesceGap: sizes.gap, Prefetch: lc.Prefetch,
		CompletionConcurrency: lc.CompletionConcurrency,
	}
	if lc.BackgroundCompletion {
		// Without a cache directory the server never completes a layer.
		cfg.CacheDir = cacheDir
	}
	m := &lazyServer{c: c, cfg: cfg, served: map[string]snapshotter.LazyLayer{}, failed: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	m.pid, m.start = c.ServerPID()
	if kc, ok := ro.Keychain.(*kbsKeychain); ok {
		m.creds = kc
	}
	if err := c.Configure(ctx, cfg); err != nil {
		c.Close()
		return nil, err
	}
	go m.watch(context.WithoutCancel(ctx), lazyWatchInterval)
	// The server and its mounts outlive cocoond on purpose: only the
	// watch stops and the connections are dropped.
	d.onClose(func() {
		close(m.stop)
		<-m.done
		c.Close()
	})
	d.lazyMetrics = c
	d.ready.lazy = m
	return m, nil
}

// lazyWatchInterval is how often cocoond checks that the lazy FUSE server
// it talks to still runs.
const lazyWatchInterval = 2 * time.Second

// lazyServer is the snapshotter.LazyMounter over the detached lazy FUSE
// server. Registry credentials from the KBS are fetched on first need, as
// for full pulls, and handed to the server then (re-Configure).
//
// Should the server die (crash, OOM kill), its mounts answer ENOTCONN.
// watch notices within lazyWatchInterval: the client starts a new server
// (which detaches the dead mounts) and every layer mounted through this
// mounter is mounted again on it, from its local copy when complete. A
// layer that cannot be mounted again is retried at every check.
type lazyServer struct {
	c     *server.Client
	cfg   server.Config // without credentials
	creds *kbsKeychain  // nil: no authenticated_registry_credentials_uri

	mu        sync.Mutex
	credsSent bool

	// opMu orders Unmount and the re-mount of a directory after a server
	// change, so that a removed snapshot is never mounted again.
	opMu   sync.Mutex
	smu    sync.Mutex
	served map[string]snapshotter.LazyLayer // by mount point
	failed map[string]bool                  // served, but not mounted on the current server

	pid        int // the server last seen (watch's goroutine only)
	start      uint64
	stop, done chan struct{}
}

var _ snapshotter.LazyMounter = (*lazyServer)(nil)

// Mount serves l at dir. Mounting a layer the server already serves there
// (a restarted cocoond re-mounting its committed layers) is a no-op that
// fetches neither credentials nor a key from the KBS.
func (m *lazyServer) Mount(ctx context.Context, dir string, l snapshotter.LazyLayer) error {
	spec := server.NewLayerSpec(l.ImageRef, l.Manifest, l.Blob, l.DiffID, l.TOCDigest, l.Encrypted)
	if err := m.sendCredentials(ctx, dir, spec); err != nil {
		return err
	}
	if err := m.c.Mount(ctx, dir, spec); err != nil {
		return err
	}
	m.smu.Lock()
	m.served[filepath.Clean(dir)] = l
	delete(m.failed, filepath.Clean(dir))
	m.smu.Unlock()
	return nil
}

// sendCredentials configures the server with the registry credentials
// before the first mount that needs them.
func (m *lazyServer) sendCredentials(ctx context.Context, dir string, spec server.LayerSpec) error {
	if m.creds == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.credsSent {
		return nil
	}
	ms, err := m.c.List(ctx)
	if err != nil {
		return err
	}
	for _, mi := range ms {
		if mi.Dir == filepath.Clean(dir) && mi.Layer == spec.Blob.Digest {
			return nil // served already: nothing to fetch
		}
	}
	doc, err := m.creds.document(ctx)
	if err != nil {
		return err
	}
	cfg := m.cfg
	cfg.AuthFile = doc
	if err := m.c.Configure(ctx, cfg); err != nil {
		return fmt.Errorf("giving the lazy FUSE server the registry credentials: %w", err)
	}
	m.credsSent = true
	return nil
}

// Unmount stops serving dir and drops its layer's local copy.
func (m *lazyServer) Unmount(ctx context.Context, dir string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.smu.Lock()
	delete(m.served, filepath.Clean(dir))
	delete(m.failed, filepath.Clean(dir))
	m.smu.Unlock()
	return m.c.Unmount(ctx, dir)
}

// watch checks the server every interval until stop is closed.
func (m *lazyServer) watch(ctx context.Context, interval time.Duration) {
	defer close(m.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.check(ctx)
	}
}

// check asks the server for its mounts (the client reconnects, starting a
// new server, when it is gone) and, when the server changed, mounts every
// served layer again on the new one.
func (m *lazyServer) check(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := m.c.List(lctx); err != nil {
		log.G(ctx).WithError(err).Warn("the lazy FUSE server does not answer")
		return
	}
	pid, start := m.c.ServerPID()
	m.smu.Lock()
	if pid != m.pid || start != m.start {
		log.G(ctx).WithFields(log.Fields{"old_pid": m.pid, "pid": pid, "layers": len(m.served)}).
			Error("the lazy FUSE server died: its mounts failed with ENOTCONN; mounting the lazy layers again on a new server")
		m.pid, m.start = pid, start
		for dir := range m.served {
			m.failed[dir] = true
		}
	}
	dirs := make([]string, 0, len(m.failed))
	for dir := range m.failed {
		dirs = append(dirs, dir)
	}
	m.smu.Unlock()
	for _, dir := range dirs {
		m.remount(lctx, dir)
	}
}

// remount mounts the layer served at dir again, unless it was unmounted
// meanwhile.
func (m *lazyServer) remount(ctx context.Context, dir string) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.smu.Lock()
	l, ok := m.served[dir]
	m.smu.Unlock()
	if !ok {
		return
	}
	lg := log.G(ctx).WithFields(log.Fields{"mountpoint": dir, "layer": l.Blob.Digest})
	if err := m.Mount(ctx, dir, l); err != nil {
		lg.WithError(err).Error("cannot mount the lazy layer again on the new lazy FUSE server; retrying")
		return
	}
	lg.Info("lazy layer mounted again on the new lazy FUSE server")
}
