// Package ttrpcsock serves ttRPC services on a unix socket named by a
// unix:// URI, as guest-components' CDH and AA binaries do: the socket's
// parent directory is created, a stale socket file is replaced, and Close
// stops accepting, lets requests in flight finish, and removes the socket.
//
// It knows nothing about the services; kata/cdh and kata/aa register them.
// The socket is made 0600: only root (the kata-agent, api-server-rest)
// talks to these services, and they hand out secrets.
package ttrpcsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// Scheme is the only address scheme the services accept.
const Scheme = "unix://"

// ShutdownTimeout bounds how long Close waits for requests in flight.
const ShutdownTimeout = 10 * time.Second

// SocketPath returns the file path of a unix:// URI ("unix:///run/x.sock"
// is "/run/x.sock"). Like upstream, any other scheme is refused; the path
// must be absolute.
func SocketPath(uri string) (string, error) {
	p, ok := strings.CutPrefix(uri, Scheme)
	if !ok {
		return "", fmt.Errorf("socket address %q: scheme is not %s", uri, Scheme)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("socket address %q: path %q is not absolute", uri, p)
	}
	return filepath.Clean(p), nil
}

// Server is a ttRPC server listening on a unix socket.
type Server struct {
	*ttrpc.Server
	path  string
	l     net.Listener
	done  chan struct{}
	err   error
	close sync.Once
}

// Listen binds the socket named by uri (creating its parent directory 0755
// and replacing a stale socket; any other kind of file there is an error), calls each register function with the new ttrpc.Server, and
// serves until Close.
func Listen(ctx context.Context, uri string, register ...func(*ttrpc.Server)) (*Server, error) {
	path, err := SocketPath(uri)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("socket %s: a file that is not a socket is in the way (mode %v)", path, fi.Mode())
		}
		// A stale socket from an earlier run; listen replaces it.
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return nil, fmt.Errorf("ttrpc server: %w", err)
	}
	for _, r := range register {
		r(srv)
	}
	l, err := listen(ctx, path)
	if err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	s := &Server{Server: srv, path: path, l: l, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		err := srv.Serve(ctx, l)
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			s.err = err
			log.G(ctx).WithError(err).WithField("socket", path).Error("ttrpc server stopped")
		}
	}()
	return s, nil
}

// listen binds path with mode 0600 from the start: the socket's mode is set
// (fchmod) before bind, which on Linux gives the new file that mode, so no
// one else can connect in between. A stale socket is removed first.
func listen(ctx context.Context, path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = syscall.Fchmod(int(fd), 0o600) }); cerr != nil {
			return cerr
		}
		return err
	}}
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

// Path is the socket's file path.
func (s *Server) Path() string { return s.path }

// Close stops accepting connections, waits up to ShutdownTimeout for
// requests in flight, closes the rest and removes the socket file. It
// returns the error that stopped serving early, if any.
func (s *Server) Close() error {
	s.close.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			_ = s.Server.Close()
		}
		<-s.done
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) && s.err == nil {
			s.err = fmt.Errorf("remove socket: %w", err)
		}
	})
	return s.err
}

// Dial connects a ttRPC client to the socket named by uri, as the
// kata-agent and api-server-rest do; the caller closes the client.
func Dial(ctx context.Context, uri string) (*ttrpc.Client, error) {
	path, err := SocketPath(uri)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", uri, err)
	}
	return ttrpc.NewClient(conn), nil
}
