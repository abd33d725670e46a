package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/internal/detach"
)

// DefaultStateDir is the state directory of the server of the default
// cocoond root.
const DefaultStateDir = "/run/cocoon/lazy"

// KeyFunc returns the unwrapped key of an encrypted layer (decrypt.UnwrapLayer
// through the KBS, as a full pull does). Client.Mount ships it to the server
// and clears it.
type KeyFunc func(ctx context.Context, l LayerSpec) (*decrypt.LayerKey, error)

// UnwrapWith is the KeyFunc that unwraps layer keys as a full pull does
// (decrypt.UnwrapLayer with o: the KBS, local private keys).
func UnwrapWith(o decrypt.Options) KeyFunc {
	return func(ctx context.Context, l LayerSpec) (*decrypt.LayerKey, error) {
		return decrypt.UnwrapLayer(ctx, l.Blob, o)
	}
}

// Options configure Connect.
type Options struct {
	// StateDir holds the server's socket, state, mounts file and log; one
	// per cocoond root (default DefaultStateDir). Created 0700.
	StateDir string
	// Key unwraps the keys of encrypted layers; nil refuses them.
	Key KeyFunc
}

// Client talks to the lazy FUSE server. Its Mount and Unmount have the
// shape of the snapshotter's LazyMounter. It is safe for concurrent use:
// each request takes a connection of its own from a small pool, so a slow
// Mount (a TOC fetched from a far registry) delays no other.
type Client struct {
	opts Options

	reconnectMu sync.Mutex // one reconnect at a time

	mu     sync.Mutex
	state  State
	gen    uint64 // bumped by every reconnect: older connections are dropped
	idle   []net.Conn
	cfg    *Config // the last Configure, sent again to a restarted server
	closed bool
}

// maxIdle bounds the connections kept open between requests.
const maxIdle = 4

// Connect connects to the live server of opts.StateDir or, when there is
// none (never started, or dead: the state file's PID is gone or reused),
// starts one, which first lazily unmounts what a dead predecessor left.
// The server outlives the caller.
func Connect(ctx context.Context, opts Options) (*Client, error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	opts.StateDir = dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lazy FUSE server state directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	// Another client may be starting the server at the same time: the
	// server that loses the lock fails, and this one looks again until the
	// winner has written its state.
	var last error
	for attempt := 0; attempt < connectAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		st, err := ReadState(dir)
		if err == nil && detach.Alive(st.PID, st.StartTime) {
			c, err := dial(ctx, st)
			if err == nil {
				return &Client{opts: opts, state: *st, idle: []net.Conn{c}}, nil
			}
			last = err
			continue
		}
		if last = start(ctx, dir); last == nil {
			if st, err := ReadState(dir); err == nil && detach.Alive(st.PID, st.StartTime) {
				if c, err := dial(ctx, st); err == nil {
					return &Client{opts: opts, state: *st, idle: []net.Conn{c}}, nil
				}
			}
		}
	}
	return nil, last
}

// connectAttempts bounds Connect's tries (about 5 s of retries).
const connectAttempts = 100

// ReadState reads the server's state file in stateDir.
func ReadState(stateDir string) (*State, error) {
	var st State
	if err := detach.ReadState(filepath.Join(stateDir, stateFile), &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func dial(ctx context.Context, st *State) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", st.Socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to the lazy FUSE server (pid %d): %w", st.PID, err)
	}
	return c, nil
}

// start runs a new server and waits until it listens (or fails: another
// server that won the lock makes it fail, and Connect looks again).
func start(ctx context.Context, stateDir string) error {
	statR, statW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer statR.Close()
	cmd, err := detach.Start(filepath.Join(stateDir, logFile), []*os.File{statW}, ServerCommand, stateDir)
	statW.Close()
	if err != nil {
		return fmt.Errorf("starting the lazy FUSE server: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	status, _ := io.ReadAll(statR)
	stop()
	if string(status) == "ok\n" {
		_ = cmd.Process.Release() // only frees the handle; the server runs on detached
		return nil
	}
	_ = cmd.Wait()
	msg := strings.TrimPrefix(strings.TrimSpace(string(status)), "error: ")
	if msg == "" {
		msg = "exited without reporting; see " + filepath.Join(stateDir, logFile)
	}
	return fmt.Errorf("lazy FUSE server: %s", msg)
}

// ServerPID returns the server process's PID and start time.
func (c *Client) ServerPID() (int, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.PID, c.state.StartTime
}

// Close closes the connections; the server and its mounts stay.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for _, conn := range c.idle {
		errs = append(errs, conn.Close())
	}
	c.idle = nil
	return errors.Join(errs...)
}

func (c *Client) call(ctx context.Context, req *request) (response, error) {
	resp, gen, err := c.try(ctx, req)
	if err != nil && ctx.Err() == nil {
		// The connection broke: the server died (its mounts with it) or
		// restarted. Connect again (starting a server if need be), give it
		// the configuration again, and retry once.
		if rerr := c.reconnect(ctx, gen); rerr != nil {
			return resp, fmt.Errorf("lazy FUSE server %s: %w (reconnecting: %w)", req.Op, err, rerr)
		}
		resp, _, err = c.try(ctx, req)
	}
	if err != nil {
		return resp, fmt.Errorf("lazy FUSE server %s: %w", req.Op, err)
	}
	if resp.Error != "" {
		return resp, fmt.Errorf("lazy FUSE server %s: %s", req.Op, resp.Error)
	}
	return resp, nil
}

// try sends req on a pooled or new connection. A transport error closes
// the connection and is returned with the generation it belonged to.
func (c *Client) try(ctx context.Context, req *request) (response, uint64, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return response{}, 0, errors.New("client closed")
	}
	gen, st := c.gen, c.state
	var conn net.Conn
	if n := len(c.idle); n > 0 {
		conn, c.idle = c.idle[n-1], c.idle[:n-1]
	}
	c.mu.Unlock()
	if conn == nil {
		var err error
		if conn, err = dial(ctx, &st); err != nil {
			return response{}, gen, err
		}
	}
	resp, err := roundTrip(ctx, conn, req)
	if err != nil {
		conn.Close()
		return resp, gen, err
	}
	c.put(conn, gen)
	return resp, gen, nil
}

// put returns conn to the pool unless it belongs to a replaced server.
func (c *Client) put(conn net.Conn, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || gen != c.gen || len(c.idle) >= maxIdle {
		conn.Close()
		return
	}
	c.idle = append(c.idle, conn)
}

// roundTrip sends req and reads the response; a transport error is
// returned as such, a server error in the response.
func roundTrip(ctx context.Context, conn net.Conn, req *request) (response, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{}) //nolint:errcheck
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var resp response
	err := writeRequest(conn, req)
	if err == nil {
		err = readMsg(conn, &resp)
	}
	if err != nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return resp, err
}

// reconnect replaces the server of generation failed (unless another
// request already did) and gives the new one the configuration.
func (c *Client) reconnect(ctx context.Context, failed uint64) error {
	c.reconnectMu.Lock()
	defer c.reconnectMu.Unlock()
	c.mu.Lock()
	current, cfg := c.gen, c.cfg
	c.mu.Unlock()
	if current != failed {
		return nil
	}
	nc, err := Connect(ctx, c.opts)
	if err != nil {
		return err
	}
	conn := nc.idle[0]
	if cfg != nil {
		resp, err := roundTrip(ctx, conn, &request{Op: opConfigure, Config: cfg, secret: cfg.AuthFile})
		if err == nil && resp.Error != "" {
			err = errors.New(resp.Error)
		}
		if err != nil {
			conn.Close()
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, old := range c.idle {
		old.Close()
	}
	c.gen++
	c.state, c.idle = nc.state, []net.Conn{conn}
	return nil
}

// Configure sets the registry settings and cache of the mounts that
// follow. cocoond calls it after every Connect (the server keeps no
// configuration on disk: it holds credentials); the Client sends it again
// by itself to a server it had to reconnect to.
func (c *Client) Configure(ctx context.Context, cfg Config) error {
	_, err := c.call(ctx, &request{Op: opConfigure, Config: &cfg, secret: cfg.AuthFile})
	if err == nil {
		c.mu.Lock()
		c.cfg = &cfg
		c.mu.Unlock()
	}
	return err
}

// Mount mounts the layer read-only at dir (which must exist). For an
// encrypted layer the key comes from Options.Key; it is sent over the
// socket only, and cleared here. Mounting the same layer again at the
// same dir succeeds (a restarted cocoond re-mounts what it committed).
func (c *Client) Mount(ctx context.Context, dir string, l LayerSpec) error {
	req := &request{Op: opMount, Dir: dir, Layer: &l}
	if l.Encrypted {
		// A restarted cocoond mounting what the server still serves needs
		// no key (no trip to the KBS).
		if served, err := c.serves(ctx, dir, l); err != nil || served {
			return err
		}
		if c.opts.Key == nil {
			return fmt.Errorf("layer %s is encrypted and the lazy mounter has no key source", l.Blob.Digest)
		}
		k, err := c.opts.Key(ctx, l)
		if err != nil {
			return err
		}
		b, err := k.MarshalBinary()
		k.Clear()
		if err != nil {
			return err
		}
		req.secret = b
		defer clear(b)
	}
	_, err := c.call(ctx, req)
	return err
}

// serves reports whether the server already serves l at dir.
func (c *Client) serves(ctx context.Context, dir string, l LayerSpec) (bool, error) {
	ms, err := c.List(ctx)
	if err != nil {
		return false, err
	}
	dir = filepath.Clean(dir)
	for _, m := range ms {
		if m.Dir == dir && m.Layer == l.Blob.Digest {
			return true, nil
		}
	}
	return false, nil
}

// MountWithKey is Mount with the key given; the key is cleared.
func (c *Client) MountWithKey(ctx context.Context, dir string, l LayerSpec, k *decrypt.LayerKey) error {
	b, err := k.MarshalBinary()
	k.Clear()
	if err != nil {
		return err
	}
	defer clear(b)
	_, err = c.call(ctx, &request{Op: opMount, Dir: dir, Layer: &l, secret: b})
	return err
}

// Unmount stops serving dir and drops the local copy of its layer. A busy
// mount is detached lazily and reported. A directory that is not served is
// not an error (whatever a dead server left there is detached).
func (c *Client) Unmount(ctx context.Context, dir string) error {
	_, err := c.call(ctx, &request{Op: opUnmount, Dir: dir})
	return err
}

// List returns the mounts the server serves.
func (c *Client) List(ctx context.Context) ([]MountInfo, error) {
	resp, err := c.call(ctx, &request{Op: opList})
	return resp.Mounts, err
}

var _ prometheus.Gatherer = (*Client)(nil)

// Gather returns the server's metrics (the lazy layers' fusefs counters
// and the server process's own, prefixed cocoon_lazy_server_), so that
// cocoond serves them with its own: a Client is a prometheus.Gatherer
// (prometheus.Gatherers{cocoondRegistry, client}).
func (c *Client) Gather() ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.call(ctx, &request{Op: opMetrics})
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(resp.Metrics))
	if err != nil {
		return nil, fmt.Errorf("lazy FUSE server metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(mfs))
	for _, mf := range mfs {
		out = append(out, mf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// Stop asks the server of stateDir to unmount everything and exit
// (SIGTERM), waiting up to timeout. cocoond does not call it on its own
// exit: the mounts must outlive it. It returns nil when no server runs.
func Stop(stateDir string, timeout time.Duration) error {
	st, err := ReadState(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !detach.Alive(st.PID, st.StartTime) {
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	deadline := time.Now().Add(timeout)
	for detach.Alive(st.PID, st.StartTime) {
		if time.Now().After(deadline) {
			return fmt.Errorf("lazy FUSE server %d still running after %v; see %s", st.PID, timeout, st.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
