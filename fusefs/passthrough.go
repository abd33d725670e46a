package fusefs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH, CAP_SYS_ADMIN in
// the initial user namespace): once a layer is complete, an opened regular
// file is backed by a plain file and the kernel reads it directly, without
// a round trip through this process.
//
// The plain copies are written from the verified local copy, chunk by chunk
// (each chunk checked against the TOC as for any read), hashed against the
// TOC entry's whole-file digest under a temporary name, and renamed only
// when that digest matches. A copy found on disk (an earlier run) is hashed
// again before this process first serves it. After that the kernel reads it
// without further checks: the directory must be as private as the local
// copy beside it (guest memory or the encrypted storage volume).
//
// The kernel refuses to mix modes on one inode: an open in passthrough mode
// fails with EIO while the inode is open in caching mode, and the other way
// round. Each node therefore counts its opens of either kind and gives
// passthrough only when no caching open is live.

// errNotLocal: the layer has no verified local copy yet.
var errNotLocal = errors.New("layer not complete")

// plainFiles are the materialised files of one completed layer, named by
// their whole-file digest (identical files share one copy).
type plainFiles struct {
	mu       sync.Mutex
	dir      string
	verified map[digest.Digest]bool // hashed by this process
	failed   map[digest.Digest]error
	flights  map[digest.Digest]*plainFlight
}

type plainFlight struct {
	done chan struct{}
	err  error
}

func (p *plainFiles) setDir(dir string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir = dir
}

// openPlain returns the verified plain copy of the regular file e, opened
// read-only, writing it first if needed. One writer per content digest;
// other callers wait for it. A copy that fails verification is never
// opened, and the file is not tried again by this process.
func (l *Layer) openPlain(ctx context.Context, e *estargz.TOCEntry) (*os.File, error) {
	if !l.local.Load() {
		return nil, errNotLocal
	}
	if err := l.badErr(); err != nil {
		return nil, err
	}
	d, err := digest.Parse(e.Digest)
	if err != nil {
		return nil, fmt.Errorf("%s: TOC entry has no usable whole-file digest: %w: %w", e.Name, err, errdefs.ErrNotImplemented)
	}
	p := &l.plain
	for {
		p.mu.Lock()
		dir := p.dir
		if err := p.failed[d]; err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.verified[d] {
			p.mu.Unlock()
			return os.Open(filepath.Join(dir, d.Encoded()))
		}
		if f := p.flights[d]; f != nil {
			p.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		f := &plainFlight{done: make(chan struct{})}
		if p.flights == nil {
			p.flights, p.verified, p.failed = map[digest.Digest]*plainFlight{}, map[digest.Digest]bool{}, map[digest.Digest]error{}
		}
		p.flights[d] = f
		p.mu.Unlock()

		// The copy is local work shared by every waiter: an interrupted
		// open must not abandon it.
		f.err = l.materialise(context.WithoutCancel(ctx), e, d, dir)
		p.mu.Lock()
		delete(p.flights, d)
		if f.err == nil {
			p.verified[d] = true
		} else {
			p.failed[d] = f.err
		}
		p.mu.Unlock()
		close(f.done)
	}
}

// materialise makes dir/<hex of d> hold exactly the content of e, checked
// against d.
func (l *Layer) materialise(ctx context.Context, e *estargz.TOCEntry, d digest.Digest, dir string) error {
	if !d.Algorithm().Available() {
		return fmt.Errorf("%s: digest algorithm %s unavailable: %w", e.Name, d.Algorithm(), errdefs.ErrNotImplemented)
	}
	final := filepath.Join(dir, d.Encoded())
	if f, err := os.Open(final); err == nil {
		herr := hashFile(f, d, e.Size)
		f.Close()
		if herr == nil {
			return nil
		}
		l.log.WithField("file", e.Name).WithError(herr).Warn("lazy layer: plain copy on disk does not match the TOC; writing it again")
		if err := os.Remove(final); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, d.Encoded()+"-*.partial")
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name()) // no-op after the rename
	}()
	h := d.Algorithm().Hash()
	w := bufio.NewWriterSize(io.MultiWriter(tmp, h), 1<<20)
	const step = 4 << 20
	for off := int64(0); off < e.Size; {
		parts, err := l.slices(ctx, e, min(step, e.Size-off), off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		n := 0
		for _, b := range parts {
			if _, err := w.Write(b); err != nil {
				return err
			}
			n += len(b)
		}
		if n == 0 {
			return fmt.Errorf("%s: short read at %d: %w", e.Name, off, io.ErrUnexpectedEOF)
		}
		off += int64(n)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		err := fmt.Errorf("%s: content digest %s, the TOC names %s: %w", e.Name, got, d, errdefs.ErrFailedPrecondition)
		l.log.WithField("file", e.Name).WithError(err).Warn("lazy layer: not serving this file by passthrough")
		return err
	}
	if err := tmp.Chmod(0o400); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), final)
}

// hashFile checks that f holds size bytes digesting to d.
func hashFile(f *os.File, d digest.Digest, size int64) error {
	h := d.Algorithm().Hash()
	n, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return err
	}
	if got := digest.NewDigest(d.Algorithm(), h); n != size || got != d {
		return fmt.Errorf("%d bytes digesting to %s, want %d bytes digesting to %s: %w", n, got, size, d, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// probeBacking registers fd as a FUSE backing file and releases it again:
// FUSE_DEV_IOC_BACKING_OPEN fails with EPERM without CAP_SYS_ADMIN in the
// initial user namespace or when passthrough was not negotiated, and with
// ELOOP when fd's filesystem is stacked as deep as the mount allows.
func probeBacking(s *fuse.Server, fd int) error {
	id, errno := s.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)}) //nolint:gosec // file descriptors fit 32 bits
	if errno != 0 {
		return fmt.Errorf("FUSE_DEV_IOC_BACKING_OPEN: %w", errno)
	}
	if errno := s.UnregisterBackingFd(id); errno != 0 {
		return fmt.Errorf("FUSE_DEV_IOC_BACKING_CLOSE: %w", errno)
	}
	return nil
}

// detectPassthrough reports why the mounted server cannot use passthrough,
// or nil when it can: the kernel must have offered FUSE_PASSTHROUGH at INIT
// and accept a backing file (an anonymous memfd, stacked nowhere).
func detectPassthrough(s *fuse.Server) error {
	ks := s.KernelSettings()
	if ks.Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		return fmt.Errorf("the kernel (FUSE protocol 7.%d) does not offer FUSE_PASSTHROUGH", ks.Minor)
	}
	fd, err := unix.MemfdCreate("cocoon-passthrough-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	return probeBacking(s, fd)
}
