package userspace

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const dataName = "data"

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

type rootNode struct {
	fs.Inode
	file *dataFile
}

var _ fs.NodeOnAdder = (*rootNode)(nil)

func (r *rootNode) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(dataName, ch, false)
}

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o700
	return 0
}

// dataFile is the decrypted view of the data segment.
type dataFile struct {
	fs.Inode
	cipher     *SectorCipher
	backing    *os.File
	offset     int64 // segment offset in backing
	size       int64
	sectorSize int
	direct     bool
	pool       sync.Pool
	// rmw serializes partial-sector writes against every other write, so a
	// read-modify-write cannot lose a concurrent update of the same sector.
	rmw sync.RWMutex
	// syncs counts completed fsyncs of the backing file (tests check that a
	// flush of the block device reaches it).
	syncs atomic.Int64
}

var (
	_ fs.NodeGetattrer = (*dataFile)(nil)
	_ fs.NodeOpener    = (*dataFile)(nil)
	_ fs.NodeReader    = (*dataFile)(nil)
	_ fs.NodeWriter    = (*dataFile)(nil)
	_ fs.NodeFsyncer   = (*dataFile)(nil)
	_ fs.NodeFlusher   = (*dataFile)(nil)
)

func (f *dataFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(f.size)
	out.Blocks = uint64(f.size / 512)
	out.Blksize = uint32(f.sectorSize)
	return 0
}

func (f *dataFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	// Direct I/O: the plaintext is cached by the filesystem above the loop
	// device; caching it again here would only double memory use.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *dataFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *dataFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if err := f.backing.Sync(); err != nil {
		return fs.ToErrno(err)
	}
	f.syncs.Add(1)
	return 0
}

// span returns the sector-aligned range covering [off, off+n) clipped to
// the file size.
func (f *dataFile) span(off int64, n int) (start, end, alignedEnd int64) {
	ss := int64(f.sectorSize)
	end = min(off+int64(n), f.size)
	start = off / ss * ss
	alignedEnd = (end + ss - 1) / ss * ss
	return
}

// buffer returns an aligned buffer of n bytes from the pool; requests
// larger than the pooled size (the kernel may exceed max_write for reads)
// get a fresh one.
func (f *dataFile) buffer(n int64) (*[]byte, []byte) {
	p := f.pool.Get().(*[]byte)
	if int64(cap(*p)) < n {
		f.pool.Put(p)
		b := alignedBuf(int(n))
		p = &b
	}
	return p, (*p)[:n]
}

// readCipher reads the ciphertext of the aligned range at segment offset
// start into buf; a backing file that ends early reads as zeros.
func (f *dataFile) readCipher(buf []byte, start int64) error {
	n, err := f.backing.ReadAt(buf, f.offset+start)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(buf[n:])
	return nil
}

// readPlain reads the aligned range at segment offset start into buf and
// decrypts it into dst (the same length): dst may be buf itself or any
// other slice, as the O_DIRECT alignment only binds buf. One backing-file
// read per request (the device's best pattern). The AES work stays on this
// goroutine: requests already run in parallel (the loop device sends a
// 1 MiB I/O as two), and splitting each across CPUs as well measured
// slower (median read ratio 0.71 against 0.78, write 0.61 against 0.65).
func (f *dataFile) readPlain(dst, buf []byte, start int64) error {
	if err := f.readCipher(buf, start); err != nil {
		return err
	}
	f.cipher.crypt(dst, buf, start, false)
	return nil
}

func (f *dataFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= f.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	start, end, aend := f.span(off, len(dest))
	p, buf := f.buffer(aend - start)
	defer f.pool.Put(p)
	if start == off && aend == end {
		// Whole sectors (every request of the loop device): decrypt
		// straight into the reply, so buf only ever holds ciphertext.
		if err := f.readPlain(dest[:end-off], buf, start); err != nil {
			return nil, fs.ToErrno(err)
		}
		return fuse.ReadResultData(dest[:end-off]), 0
	}
	defer clear(buf)
	if err := f.readPlain(buf, buf, start); err != nil {
		return nil, fs.ToErrno(err)
	}
	n := copy(dest, buf[off-start:end-start])
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *dataFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off >= f.size {
		return 0, syscall.ENOSPC
	}
	start, end, aend := f.span(off, len(data))
	p, buf := f.buffer(aend - start)
	defer f.pool.Put(p)
	if start == off && aend == end {
		// Whole sectors: encrypt from the request into buf, which only
		// ever holds ciphertext, then one backing-file write.
		f.rmw.RLock()
		defer f.rmw.RUnlock()
		f.cipher.crypt(buf, data[:end-off], start, true)
		if _, err := f.backing.WriteAt(buf, f.offset+start); err != nil {
			return 0, fs.ToErrno(err)
		}
		return uint32(end - off), 0
	}
	// A partial sector is read, patched and rewritten whole; the exclusive
	// lock keeps any other write of the same sector out meanwhile.
	f.rmw.Lock()
	defer f.rmw.Unlock()
	defer clear(buf)
	if err := f.readPlain(buf, buf, start); err != nil {
		return 0, fs.ToErrno(err)
	}
	n := copy(buf[off-start:], data[:end-off])
	f.cipher.crypt(buf, buf, start, true)
	if _, err := f.backing.WriteAt(buf, f.offset+start); err != nil {
		return 0, fs.ToErrno(err)
	}
	return uint32(n), 0
}
