// Package userspace is cryptvol's engine for hosts without device-mapper:
// a FUSE file system serving one file whose bytes are the decrypted data
// segment (AES-XTS in this process, exactly dm-crypt's aes-xts-plain64
// layout), and a loop device over that file, so ext4 can sit on top.
//
// # Speed
//
// The loop device runs with direct I/O and submits its requests
// asynchronously; the FUSE connection takes them up to 1 MiB each
// (max_write, max_read and max_pages at the kernel's limit) and, with
// FUSE_ASYNC_DIO, several at once, which the server answers in parallel.
// Each request is one read or write of the backing file (opened O_DIRECT
// when sectors are 4096 bytes) into or out of a pooled aligned buffer
// that only ever holds ciphertext; reads decrypt straight into the reply.
// AES-XTS runs in assembly on amd64: VAES on AVX-512 (sixteen blocks per
// iteration) or AES-NI (eight blocks in flight), with its own key schedule
// so it can be wiped at Detach; elsewhere it falls back to crypto/aes.
// Concurrent requests use the CPUs; one request is not split further. The page cache is not used below
// ext4 (the file is FOPEN_DIRECT_IO), so a writeback cache would not
// apply; a write is in the backing file before it is acknowledged, and an
// fsync of the block device reaches the backing file's fsync.
// BenchmarkSequentialDirectIO in package cryptvol measures the result
// against a plain loop device.
//
// Plaintext exists only in this process's memory and in the kernel's page
// cache of the filesystem above; it is never written to the backing file
// or anywhere else. The volume key is expanded into the AES key schedule
// and not kept otherwise. The engine must never serve the file to anyone
// but the loop device it attached (the mount is private to root).
package userspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
)

// Name of this engine.
const Name = "userspace"

// DefaultRuntimeDir is where the FUSE mounts live.
const DefaultRuntimeDir = "/run/cocoon/cryptvol"

// maxIO is the largest FUSE request (and loop request) we serve.
const maxIO = 1 << 20

// Options configures the engine.
type Options struct {
	// RuntimeDir holds one private FUSE mount per attached volume.
	RuntimeDir string
	// BufferedLoop attaches the loop device without direct I/O. By default
	// it uses direct I/O so plaintext is cached once, above the loop device.
	BufferedLoop bool
}

// Engine is the userspace AES-XTS engine.
type Engine struct{ opts Options }

// New returns the engine; an empty RuntimeDir means DefaultRuntimeDir.
func New(o Options) *Engine {
	if o.RuntimeDir == "" {
		o.RuntimeDir = DefaultRuntimeDir
	}
	return &Engine{opts: o}
}

// Name implements engine.Engine.
func (e *Engine) Name() string { return Name }

// SectorCipher en- and decrypts whole sectors of a data segment the way
// dm-crypt's aes-xts-plain64 does for LUKS2: the IV of a sector is the
// little-endian 64-bit number of its first 512-byte unit within the
// segment, plus iv_tweak (LUKS2 never sets iv_large_sectors).
type SectorCipher struct {
	c          sectorXTS
	sectorSize int
	ivTweak    uint64
}

// NewSectorCipher expands key (32 or 64 bytes) into an AES-XTS cipher.
func NewSectorCipher(key []byte, sectorSize int, ivTweak uint64) (*SectorCipher, error) {
	c, err := newXTS(key)
	if err != nil {
		return nil, fmt.Errorf("aes-xts key: %w", err)
	}
	return &SectorCipher{c: c, sectorSize: sectorSize, ivTweak: ivTweak}, nil
}

// IV returns the plain64 IV (as the XTS sector number) of the sector that
// starts at byte offset off of the segment.
func (s *SectorCipher) IV(off int64) uint64 { return uint64(off)/512 + s.ivTweak }

// Encrypt encrypts b in place; b starts at segment offset off and both are
// sector aligned. Large buffers are split across CPUs.
func (s *SectorCipher) Encrypt(b []byte, off int64) { s.parallel(b, b, off, true) }

// Decrypt decrypts b in place; see Encrypt.
func (s *SectorCipher) Decrypt(b []byte, off int64) { s.parallel(b, b, off, false) }

// Wipe overwrites the key schedules where the implementation owns them
// (the AES-NI one does; crypto/aes's cannot be reached). The cipher must
// not be used afterwards.
func (s *SectorCipher) Wipe() { s.c.wipe() }

// crypt en- or decrypts the sectors of src into dst (the same slice or
// disjoint) on the calling goroutine.
func (s *SectorCipher) crypt(dst, src []byte, off int64, enc bool) {
	ss := s.sectorSize
	for i := 0; i+ss <= len(src); i += ss {
		iv := s.IV(off + int64(i))
		if enc {
			s.c.encrypt(dst[i:i+ss], src[i:i+ss], iv)
		} else {
			s.c.decrypt(dst[i:i+ss], src[i:i+ss], iv)
		}
	}
}

// parallelMin is the smallest buffer worth splitting across goroutines:
// below it the AES-NI work is shorter than waking another CPU.
const parallelMin = 64 << 10

func (s *SectorCipher) parallel(dst, src []byte, off int64, enc bool) {
	workers := runtime.GOMAXPROCS(0)
	if len(src) < parallelMin || workers < 2 {
		s.crypt(dst, src, off, enc)
		return
	}
	n := len(src) / s.sectorSize
	per := (n + workers - 1) / workers * s.sectorSize
	var wg sync.WaitGroup
	for lo := per; lo < len(src); lo += per {
		hi := min(lo+per, len(src))
		wg.Go(func() { s.crypt(dst[lo:hi], src[lo:hi], off+int64(lo), enc) })
	}
	first := min(per, len(src))
	s.crypt(dst[:first], src[:first], off, enc)
	wg.Wait()
}

// Attach implements engine.Engine.
func (e *Engine) Attach(ctx context.Context, t engine.Target) (_ engine.Device, retErr error) {
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("userspace engine: %w", err)
	}
	sc, err := NewSectorCipher(t.Key, t.SectorSize, t.IVTweak)
	if err != nil {
		return nil, err
	}
	backing, direct, err := openBacking(t.Backing, t.Offset%4096 == 0 && t.SectorSize == 4096)
	if err != nil {
		return nil, err
	}
	d := &device{backing: backing, cipher: sc}
	defer func() {
		if retErr != nil {
			if err := d.Detach(context.WithoutCancel(ctx)); err != nil {
				log.G(ctx).WithError(err).Warn("cryptvol: detach after a failed attach")
			}
		}
	}()
	if err := os.MkdirAll(e.opts.RuntimeDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating engine runtime dir: %w", err)
	}
	d.mountDir, err = os.MkdirTemp(e.opts.RuntimeDir, "fuse-")
	if err != nil {
		return nil, fmt.Errorf("creating FUSE mount point: %w", err)
	}
	file := &dataFile{cipher: sc, backing: backing, offset: t.Offset, size: t.Size, sectorSize: t.SectorSize, direct: direct}
	file.pool.New = func() any {
		b := alignedBuf(maxIO + t.SectorSize)
		return &b
	}
	d.file = file
	root := &rootNode{file: file}
	timeout := time.Hour
	d.server, err = fs.Mount(d.mountDir, root, &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			DirectMount:   true,
			FsName:        "cocoon-cryptvol:" + t.Name,
			Name:          "cocoon",
			MaxWrite:      maxIO,
			MaxReadAhead:  maxIO,
			DisableXAttrs: true,
			// Replies are decrypted buffers in memory: nothing to splice.
			DisableSplice: true,
			// The loop device submits its direct I/O asynchronously; let
			// the kernel keep several requests in flight instead of one.
			// Sixteen keep every CPU busy and bound the memory: each
			// request in flight holds two buffers of up to 1 MiB (the
			// server's and the ciphertext one).
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			MaxBackground:     16,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mounting FUSE data file at %s: %w", d.mountDir, err)
	}
	d.loop, err = loop.Attach(ctx, filepath.Join(d.mountDir, dataName), loop.Options{BlockSize: uint32(t.SectorSize), DirectIO: !e.opts.BufferedLoop})
	if err != nil {
		return nil, fmt.Errorf("attaching loop device over the decrypted file: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{
		"engine": Name, "name": t.Name, "device": d.loop.Path(), "backing": t.Backing,
		"backing_direct_io": direct, "loop_direct_io": d.loop.DirectIO(), "xts": sc.c.name(),
	}).Info("cryptvol: userspace engine attached")
	return d, nil
}

// openBacking opens the ciphertext with O_DIRECT when every request will be
// 4096-byte aligned and the file system allows it, buffered otherwise.
func openBacking(path string, aligned bool) (*os.File, bool, error) {
	if aligned {
		if f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0); err == nil {
			return f, true, nil
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("opening encrypted backing %s: %w", path, err)
	}
	return f, false, nil
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 0
	if r := int(uintptr(unsafePointer(b)) & 4095); r != 0 {
		off = 4096 - r
	}
	return b[off : off+n : off+n]
}

type device struct {
	cipher   *SectorCipher
	file     *dataFile
	mountDir string
	server   *fuse.Server
	loop     *loop.Device
	backing  *os.File
}

func (d *device) Path() string { return d.loop.Path() }

// Detach releases the loop device, then the FUSE mount, then the backing.
func (d *device) Detach(ctx context.Context) error {
	var errs []error
	if d.loop != nil {
		if err := d.loop.Detach(ctx, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if d.server != nil {
		var err error
		for i := 0; i < 100; i++ {
			if err = d.server.Unmount(); err == nil || !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			// Lazy unmount so a stuck reference cannot keep the server
			// alive. The server may still answer the last references, so
			// its key is left to the garbage collector, not wiped.
			d.cipher = nil
			if lerr := unix.Unmount(d.mountDir, unix.MNT_DETACH); lerr != nil {
				errs = append(errs, fmt.Errorf("unmounting FUSE %s: %w", d.mountDir, err))
			}
		} else {
			d.server.Wait()
			d.wipeKey()
		}
		d.server = nil
	} else {
		d.wipeKey()
	}
	if d.mountDir != "" {
		if err := os.Remove(d.mountDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing FUSE mount point: %w", err))
		}
		d.mountDir = ""
	}
	if d.backing != nil {
		d.backing.Close()
		d.backing = nil
	}
	return errors.Join(errs...)
}

// wipeKey overwrites the key schedule once no FUSE server can use it.
func (d *device) wipeKey() {
	if d.cipher != nil {
		d.cipher.Wipe()
		d.cipher = nil
	}
}

var _ engine.Engine = (*Engine)(nil)

// EngineMount is the private FUSE mount serving the decrypted file; a
// supervisor records it to clean up after a crash.
func (d *device) EngineMount() string { return d.mountDir }
