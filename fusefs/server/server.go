// Package server runs cocoon's lazy FUSE mounts in one long-lived detached
// process per cocoond root, so that running containers keep reading their
// lazily mounted layers when cocoond is killed or restarted, and a
// restarted cocoond finds its layers still mounted (and completed ones
// served from the local copy) without pulling them again.
//
// The server is this binary re-executed with a hidden argument
// (ServerCommand; every binary that calls Connect calls
// RunServerIfRequested first in main) in its own session, as
// cryptvol/detached runs volume engines (the shared part is
// internal/detach). It listens on a unix socket in the state directory
// (mode 0700) and accepts only peers of its own uid or root (SO_PEERCRED).
// It does not require peers to be its ancestors: the cocoond that started
// it may be dead, and a restarted one is not in its process tree.
// It writes a state file (PID, start time, socket, log) and a mounts file
// (mount points and layer digests, never a secret); a client that finds
// the state stale (the server died) starts a new server, which first
// lazily unmounts (MNT_DETACH) whatever the dead one left mounted. The
// server stays in its starter's cgroup: a service manager that kills the
// whole cgroup when cocoond stops takes the mounts with it.
//
// Secrets (registry credentials, the unwrapped keys of encrypted layers)
// reach the server only over the socket and stay in its memory. It writes
// nothing to disk but the state files and, when Config.CacheDir is set,
// the completed copy of each layer (one directory per mount point, removed
// by Unmount), which for an encrypted layer is the
// decrypted blob: CacheDir must be on the encrypted storage volume or on
// tmpfs (the caller's choice).
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/fusefs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/detach"
)

// ServerCommand is the hidden first argument that makes a binary the lazy
// FUSE server. Connect decides the whole argv; nobody types it.
const ServerCommand = "__cocoon-lazy-fuse-server"

// Files in the state directory.
const (
	stateFile  = "server.json"
	mountsFile = "mounts.json"
	lockFile   = "server.lock"
	socketFile = "server.sock"
	logFile    = "server.log"
)

// Background completion of a layer.
const (
	completeConcurrency = 4
	completeSegment     = 4 << 20
	completeAttempts    = 5
)

// State is the server's state file. It never holds a secret.
type State struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/PID/stat field 22: guards against PID reuse
	Socket    string `json:"socket"`
	Log       string `json:"log"`
}

// mountRecord is one line of the mounts file, for crash cleanup.
type mountRecord struct {
	Dir   string `json:"dir"`
	Layer string `json:"layer"`
}

// RunServerIfRequested turns this process into the lazy FUSE server and
// exits when Connect started it; otherwise it returns at once. Every
// binary that calls Connect (or whose tests do, from TestMain) calls it
// first in main.
func RunServerIfRequested() {
	if !detach.Requested(ServerCommand) {
		return
	}
	status := os.NewFile(3, "status")
	stateDir := ""
	if len(os.Args) > 2 {
		stateDir = os.Args[2] // not a secret
	}
	if err := serve(stateDir, status); err != nil {
		fmt.Fprintln(os.Stderr, "lazy FUSE server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// server is the state of the server process.
type server struct {
	stateDir string
	uid      int
	ctx      context.Context

	mu      sync.Mutex
	cfg     *Config
	client  *registry.Client
	cache   *fusefs.ChunkCache
	slots   chan struct{} // background fetches running; nil: no bound
	mounts  map[string]*mount
	pending map[string]bool // mount points being mounted

	// registry holds the lazy layers' counters (fusefs.Metrics) and this
	// process's own (RSS, CPU, descriptors), for Client.Gather.
	registry *prometheus.Registry
	metrics  *fusefs.Metrics
}

// serve is the server process: take the lock, clean up after a dead
// predecessor, listen, report "ok" on status, serve until SIGTERM or
// SIGINT, then unmount everything.
func serve(stateDir string, status *os.File) error {
	fail := func(err error) error {
		if status != nil {
			fmt.Fprintf(status, "error: %v\n", err)
			status.Close()
		}
		return err
	}
	if stateDir == "" || !filepath.IsAbs(stateDir) {
		return fail(errors.New("the lazy FUSE server is started by server.Connect, not by hand"))
	}
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	ctx := log.WithLogger(context.Background(), log.G(context.Background()).WithField("component", "lazy-fuse-server"))

	lock, err := os.OpenFile(filepath.Join(stateDir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fail(err)
	}
	defer lock.Close()
	// Held for the life of the process; the kernel drops it when we die.
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(fmt.Errorf("another lazy FUSE server holds %s: %w", stateDir, err))
	}
	cleanupStale(ctx, stateDir)

	sock := filepath.Join(stateDir, socketFile)
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fail(fmt.Errorf("listening on %s: %w", sock, err))
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fail(err)
	}
	s := &server{stateDir: stateDir, uid: os.Geteuid(), ctx: ctx, mounts: map[string]*mount{}, pending: map[string]bool{}}
	if err := s.initMetrics(); err != nil {
		ln.Close()
		return fail(err)
	}
	if err := s.saveMounts(); err != nil {
		ln.Close()
		return fail(err)
	}
	st := State{PID: os.Getpid(), StartTime: detach.StartTime(os.Getpid()), Socket: sock, Log: filepath.Join(stateDir, logFile)}
	if err := detach.WriteState(filepath.Join(stateDir, stateFile), &st); err != nil {
		ln.Close()
		return fail(err)
	}
	if status != nil {
		fmt.Fprint(status, "ok\n")
		status.Close()
	}
	log.G(ctx).WithField("socket", sock).Info("lazy FUSE server serving")
	go s.accept(ln)
	sig := <-sigs
	log.G(ctx).WithField("signal", sig.String()).Info("lazy FUSE server stopping: unmounting every layer")
	ln.Close()
	s.unmountAll()
	os.Remove(filepath.Join(stateDir, stateFile))
	os.Remove(sock)
	return nil
}

// cleanupStale lazily unmounts what a dead server left mounted: its FUSE
// connections are gone, so the mounts only give ENOTCONN.
func cleanupStale(ctx context.Context, stateDir string) {
	var recs []mountRecord
	if err := detach.ReadState(filepath.Join(stateDir, mountsFile), &recs); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("reading the previous server's mounts")
		}
		return
	}
	for _, r := range recs {
		err := unix.Unmount(r.Dir, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			log.G(ctx).WithError(err).WithField("mountpoint", r.Dir).Warn("unmounting a dead server's lazy layer")
			continue
		}
		log.G(ctx).WithFields(log.Fields{"mountpoint": r.Dir, "layer": r.Layer}).Info("detached a dead server's lazy layer")
	}
}

func (s *server) saveMounts() error {
	recs := []mountRecord{}
	for dir, m := range s.mounts {
		recs = append(recs, mountRecord{Dir: dir, Layer: m.spec.Blob.Digest.String()})
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Dir < recs[j].Dir })
	return detach.WriteState(filepath.Join(s.stateDir, mountsFile), recs)
}

func (s *server) accept(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.G(s.ctx).WithError(err).Error("accept")
			}
			return
		}
		if err := checkPeer(c, s.uid); err != nil {
			log.G(s.ctx).WithError(err).Warn("connection refused")
			_ = writeMsg(c, response{Error: err.Error()})
			c.Close()
			continue
		}
		go s.handle(c)
	}
}

// checkPeer accepts a peer process of the server's uid or root. The socket
// directory (0700) already keeps others out; this holds should it be
// opened up, or the socket be passed on.
func checkPeer(c *net.UnixConn, uid int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	return peerAllowed(cred, uid)
}

func peerAllowed(cred *unix.Ucred, uid int) error {
	if cred.Uid == 0 || int(cred.Uid) == uid {
		return nil
	}
	return fmt.Errorf("peer process %d runs as uid %d; only uid %d or root may use the lazy FUSE server", cred.Pid, cred.Uid, uid)
}

func (s *server) handle(c *net.UnixConn) {
	defer c.Close()
	for {
		var req request
		if err := readRequest(c, &req); err != nil {
			return // the client went away (or spoke nonsense)
		}
		resp := s.do(&req)
		clear(req.secret)
		if err := writeMsg(c, resp); err != nil {
			return
		}
	}
}

func (s *server) do(req *request) response {
	var err error
	var resp response
	switch req.Op {
	case opConfigure:
		err = s.configure(req.Config, req.secret)
	case opMount:
		if req.Layer == nil {
			err = errors.New("mount without a layer")
			break
		}
		err = s.mount(req.Dir, *req.Layer, req.secret)
	case opUnmount:
		err = s.unmount(req.Dir)
	case opList:
		resp.Mounts = s.list()
	case opMetrics:
		resp.Metrics, err = s.gather()
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	return resp
}

func (s *server) initMetrics() error {
	s.registry = prometheus.NewRegistry()
	m, err := fusefs.NewMetrics(s.registry)
	if err != nil {
		return err
	}
	s.metrics = m
	return s.registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "cocoon_lazy_server"}))
}

// gather returns the metrics in the Prometheus text format.
func (s *server) gather() (string, error) {
	mfs, err := s.registry.Gather()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// configure builds the registry client the next mounts use; mounts made
// before keep theirs.
func (s *server) configure(cfg *Config, authFile []byte) error {
	if cfg == nil {
		return errors.New("configure without a configuration")
	}
	o := registry.Options{
		Insecure:     cfg.Insecure,
		Network:      cfg.Network,
		Hosts:        cfg.Hosts,
		Retries:      cfg.Retries,
		RetryBackoff: time.Duration(cfg.RetryBackoff),
	}
	if len(authFile) > 0 {
		af, err := registry.ParseAuthFile(authFile) // authFile is cleared by the caller
		if err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
		o.Keychain = af
	}
	if _, err := registry.NewTransport(cfg.Network); err != nil {
		return fmt.Errorf("registry network settings: %w", err)
	}
	if cfg.CacheDir != "" {
		if !filepath.IsAbs(cfg.CacheDir) {
			return fmt.Errorf("cache directory %q is not absolute", cfg.CacheDir)
		}
		if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
			return err
		}
	}
	client := registry.New(o)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		n := cfg.CacheBytes
		if n <= 0 {
			n = fusefs.DefaultCacheBytes
		}
		s.cache = fusefs.NewChunkCache(n)
		setMemoryLimit(s.ctx, n)
		if cfg.CompletionConcurrency > 0 {
			s.slots = make(chan struct{}, cfg.CompletionConcurrency)
		}
	}
	s.cfg, s.client = cfg, client
	log.G(s.ctx).WithFields(log.Fields{"cache_dir": cfg.CacheDir, "prefetch": cfg.Prefetch}).Info("configured")
	return nil
}

func (s *server) list() []MountInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]MountInfo, 0, len(s.mounts))
	for dir, m := range s.mounts {
		out = append(out, m.info(dir))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out
}

// unmount stops serving dir and drops the local copy of its layer. A
// directory not served is not an error: whatever a dead server left
// mounted there is detached, and its local copy dropped too.
func (s *server) unmount(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("mount point %q is not absolute", dir)
	}
	dir = filepath.Clean(dir)
	s.mu.Lock()
	m, ok := s.mounts[dir]
	var serr error
	if ok {
		delete(s.mounts, dir)
		serr = s.saveMounts()
	}
	ld := localDir(s.cfg, dir)
	s.mu.Unlock()
	var err error
	if ok {
		err = m.release()
		ld = m.localDir
	} else {
		detachStale(s.ctx, dir)
	}
	if ld != "" {
		if rerr := os.RemoveAll(ld); rerr != nil {
			err = errors.Join(err, fmt.Errorf("dropping the local copy of %s: %w", dir, rerr))
		}
	}
	return errors.Join(err, serr)
}

func (s *server) unmountAll() {
	s.mu.Lock()
	ms := s.mounts
	s.mounts = map[string]*mount{}
	_ = s.saveMounts()
	s.mu.Unlock()
	for dir, m := range ms {
		if err := m.release(); err != nil {
			log.G(s.ctx).WithError(err).WithField("mountpoint", dir).Warn("unmount")
		}
	}
}

// keyFrom decodes a shipped layer key and zeroes the encoding.
func keyFrom(b []byte) (*decrypt.LayerKey, error) {
	defer clear(b)
	if len(b) == 0 {
		return nil, errors.New("encrypted layer without a key")
	}
	return decrypt.UnmarshalLayerKey(b)
}

// memoryHeadroom is what the server needs besides its chunk cache: the
// segments background completions have in flight (completeConcurrency
// download buffers of completeSegment per layer, lent to joined range
// reads) for a few layers at once, and the runtime.
const memoryHeadroom = 256 << 20

// setMemoryLimit gives the Go runtime a soft memory limit of the chunk
// cache plus memoryHeadroom, unless GOMEMLIMIT already sets one: a server
// that completes large layers otherwise lets its heap grow with the bytes
// it has moved before collecting, and its resident size with the image.
func setMemoryLimit(ctx context.Context, cacheBytes int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := cacheBytes + memoryHeadroom
	debug.SetMemoryLimit(limit)
	log.G(ctx).WithField("limit", limit).Debug("runtime soft memory limit set")
}
