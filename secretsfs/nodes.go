package secretsfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

const (
	fileMode = 0o400
	dirMode  = 0o500
)

// maxValueSize bounds what a sealed file or KBS resource may resolve to:
// the KBS client's own response bound, so no value it returns is refused.
// It is also the size listed for a value not yet resolved (see fileAttr).
const maxValueSize = 64 << 20

// unknownSize marks a content whose size is not known without contacting
// the KBS.
const unknownSize = -1

// ino derives a stable inode number from a node's identity, so a file
// keeps its number across lookups, forgets and remounts.
func ino(kind uint32, parts ...string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte{byte(kind >> 12)})
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	n := h.Sum64()
	if n <= fuse.FUSE_ROOT_ID || n == ^uint64(0) {
		n += 2
	}
	return n
}

func (f *FS) setOwner(a *fuse.Attr) {
	a.Owner = fuse.Owner{Uid: f.uid, Gid: f.gid}
}

func (f *FS) dirAttr(a *fuse.Attr, mtime time.Time) {
	a.Mode = fuse.S_IFDIR | dirMode
	a.Nlink = 2
	f.setOwner(a)
	a.SetTimes(&mtime, &mtime, &mtime)
}

// fileAttr fills a file's attributes. A value not resolved yet is listed
// with the bound of its size and no blocks: the kernel stops page-cache
// and splice reads (sendfile, as busybox cat does) at the size it last
// saw, and shrinks it at the first short read, so a bound never cuts a
// value short while 0 would. Open invalidates the attributes, so a stat
// or fstat after it reports the exact size.
func (f *FS) fileAttr(a *fuse.Attr, c *content) {
	a.Mode = fuse.S_IFREG | fileMode
	a.Nlink = 1
	if c.size == unknownSize {
		a.Size, a.Blocks = maxValueSize, 0
	} else {
		a.Size = uint64(c.size)
		a.Blocks = (a.Size + 511) / 512
	}
	a.Blksize = 4096
	f.setOwner(a)
	a.SetTimes(&c.mtime, &c.mtime, &c.mtime)
}

// content is what one file serves: resolved bytes (a plaintext, or a small
// pass-through file) or, for a pass-through file too big to be a sealed
// secret, the open source file.
type content struct {
	data  []byte
	file  *os.File
	size  int64
	mtime time.Time
	// sealed is a sealed secret as read from its source, not yet unsealed
	// (data is then nil and size is not known).
	sealed []byte
}

func (c *content) release() {
	clear(c.data)
	c.data = nil
	c.sealed = nil
	if c.file != nil {
		_ = c.file.Close()
		c.file = nil
	}
}

// handle is an open file: a snapshot of its content taken at open, so a
// TTL refresh or a source change never mixes two values within one read
// sequence.
type handle struct {
	mu sync.Mutex
	c  *content
}

var (
	_ gofs.FileReader   = (*handle)(nil)
	_ gofs.FileReleaser = (*handle)(nil)
)

func (h *handle) Read(_ context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c == nil || off < 0 {
		return nil, syscall.EBADF
	}
	if h.c.file != nil {
		n, err := h.c.file.ReadAt(dest, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, syscall.EIO
		}
		return fuse.ReadResultData(dest[:n]), 0
	}
	if off >= int64(len(h.c.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(h.c.data)))
	// Copy out: the reply is written after Read returns and Release
	// zeroes the buffer.
	n := copy(dest, h.c.data[off:end])
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Release(context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c != nil {
		h.c.release()
		h.c = nil
	}
	return 0
}

// attr returns the size and mtime of the open snapshot.
func (h *handle) attr() *content {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.c == nil {
		return &content{}
	}
	return &content{size: h.c.size, mtime: h.c.mtime}
}

// open turns a resolved content into a read-only handle with direct I/O.
// Direct I/O sends every read to us whatever size the kernel last saw, so
// a file listed before its value was resolved (see fileAttr) reads whole;
// its attributes are then invalidated so that the next stat or fstat asks
// again and finds the exact size in the cache.
func open(node *gofs.Inode, flags uint32, resolve func() (*content, syscall.Errno)) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	c, errno := resolve()
	if errno != 0 {
		return nil, 0, errno
	}
	// Offset -1: attributes only, there is no page cache to drop.
	_ = node.NotifyContent(-1, 0)
	return &handle{c: c}, fuse.FOPEN_DIRECT_IO, 0
}

// getattr reports the size of the open handle when there is one, else
// what attr finds without contacting the KBS.
func (f *FS) getattr(fh gofs.FileHandle, out *fuse.AttrOut, attr func() (*content, syscall.Errno)) syscall.Errno {
	if h, ok := fh.(*handle); ok {
		f.fileAttr(&out.Attr, h.attr())
		return 0
	}
	c, errno := attr()
	if errno != 0 {
		return errno
	}
	f.fileAttr(&out.Attr, c)
	c.release()
	return 0
}

// unsealErrno maps a failed unseal: EACCES when the KBS policy denied a
// fetch, EIO for everything else (bad signature, unknown kid, provider).
func unsealErrno(err error) syscall.Errno {
	switch {
	case policyDenied(err):
		return syscall.EACCES
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

// ---- root ----

type rootNode struct {
	gofs.Inode
	fsys *FS
}

var (
	_ gofs.NodeLookuper  = (*rootNode)(nil)
	_ gofs.NodeReaddirer = (*rootNode)(nil)
	_ gofs.NodeGetattrer = (*rootNode)(nil)
)

func (n *rootNode) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fsys.dirAttr(&out.Attr, n.fsys.mtime)
	return 0
}

func (n *rootNode) Readdir(context.Context) (gofs.DirStream, syscall.Errno) {
	list := make([]fuse.DirEntry, 0, len(n.fsys.names))
	for _, name := range n.fsys.names {
		list = append(list, fuse.DirEntry{Name: name, Mode: fuse.S_IFDIR, Ino: n.childIno(name)})
	}
	return gofs.NewListDirStream(list), 0
}

func (n *rootNode) childIno(name string) uint64 {
	if name == KBSDir && n.fsys.resources != nil {
		return ino(fuse.S_IFDIR, "kbs")
	}
	return ino(fuse.S_IFDIR, "src", name)
}

func (n *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	var child gofs.InodeEmbedder
	switch src := n.fsys.sources[name]; {
	case name == KBSDir && n.fsys.resources != nil:
		child = &kbsDir{fsys: n.fsys}
	case src != nil:
		child = &srcDir{fsys: n.fsys, src: src, rel: "."}
	default:
		return nil, syscall.ENOENT
	}
	n.fsys.dirAttr(&out.Attr, n.fsys.mtime)
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: n.childIno(name)}), 0
}

// ---- mirrored source directories ----

type srcDir struct {
	gofs.Inode
	fsys *FS
	src  *source
	rel  string // path inside the source, "." for its top
}

var (
	_ gofs.NodeLookuper  = (*srcDir)(nil)
	_ gofs.NodeReaddirer = (*srcDir)(nil)
	_ gofs.NodeGetattrer = (*srcDir)(nil)
)

func (n *srcDir) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fi, err := n.src.root.Stat(n.rel)
	if err != nil {
		return sourceErrno(err)
	}
	n.fsys.dirAttr(&out.Attr, fi.ModTime())
	return 0
}

// kind resolves an entry's type through symlinks inside the source;
// anything other than a directory or a regular file is not mirrored.
func kind(fi fs.FileInfo) uint32 {
	switch {
	case fi.IsDir():
		return fuse.S_IFDIR
	case fi.Mode().IsRegular():
		return fuse.S_IFREG
	}
	return 0
}

func (n *srcDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	d, err := n.src.root.Open(n.rel)
	if err != nil {
		return nil, sourceErrno(err)
	}
	ents, err := d.ReadDir(-1)
	_ = d.Close()
	if err != nil {
		log.G(n.fsys.opCtx(ctx)).WithError(err).WithField("source", n.src.name).Warn("secretsfs: read source directory")
		return nil, syscall.EIO
	}
	list := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		rel := path.Join(n.rel, e.Name())
		fi, err := n.src.root.Stat(rel) // follows symlinks that stay inside
		if err != nil {
			continue
		}
		k := kind(fi)
		if k == 0 {
			continue
		}
		list = append(list, fuse.DirEntry{Name: e.Name(), Mode: k, Ino: ino(k, "src", n.src.name, rel)})
	}
	return gofs.NewListDirStream(list), 0
}

func (n *srcDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel := path.Join(n.rel, name)
	fi, err := n.src.root.Stat(rel)
	if err != nil {
		return nil, sourceErrno(err)
	}
	switch kind(fi) {
	case fuse.S_IFDIR:
		n.fsys.dirAttr(&out.Attr, fi.ModTime())
		child := &srcDir{fsys: n.fsys, src: n.src, rel: rel}
		return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino(fuse.S_IFDIR, "src", n.src.name, rel)}), 0
	case fuse.S_IFREG:
		child := &srcFile{fsys: n.fsys, src: n.src, rel: rel}
		c, errno := child.attr(ctx)
		if errno != 0 {
			return nil, errno
		}
		n.fsys.fileAttr(&out.Attr, c)
		c.release()
		return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino(fuse.S_IFREG, "src", n.src.name, rel)}), 0
	}
	return nil, syscall.ENOENT
}

type srcFile struct {
	gofs.Inode
	fsys *FS
	src  *source
	rel  string
}

var (
	_ gofs.NodeOpener    = (*srcFile)(nil)
	_ gofs.NodeGetattrer = (*srcFile)(nil)
)

func (n *srcFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return n.fsys.getattr(fh, out, func() (*content, syscall.Errno) { return n.attr(ctx) })
}

func (n *srcFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return open(&n.Inode, flags, func() (*content, syscall.Errno) { return n.resolve(ctx) })
}

func (n *srcFile) displayPath() string { return n.src.name + "/" + n.rel }

// attr describes the file without contacting the KBS: a pass-through
// file's own size, a sealed secret's plaintext size when the plaintext is
// in the cache, else 0 (the size is not known before an open unseals).
func (n *srcFile) attr(ctx context.Context) (*content, syscall.Errno) {
	c, errno := n.load(ctx)
	if errno != 0 || c.sealed == nil {
		return c, errno
	}
	c.size = unknownSize
	if size, ok := cachedSize(n.fsys.cache, sealedKey(c.sealed)); ok {
		c.size = size
	}
	return c, 0
}

// resolve reads the source file now and returns what it serves: the
// unsealed value when it holds a sealed secret, else its bytes.
func (n *srcFile) resolve(ctx context.Context) (*content, syscall.Errno) {
	ctx = n.fsys.opCtx(ctx)
	c, errno := n.load(ctx)
	if errno != 0 || c.sealed == nil {
		return c, errno
	}
	s, mtime := c.sealed, c.mtime
	path := n.displayPath()
	pt, err := n.fsys.cache.Get(ctx, sealedKey(s), func(ctx context.Context) ([]byte, error) {
		if n.fsys.unsealer == nil {
			err := errors.New("no unsealer configured")
			log.G(ctx).WithError(err).WithField("path", path).Warn("secretsfs: unseal failed")
			return nil, err
		}
		pt, err := n.fsys.unsealer.Unseal(ctx, s)
		if err == nil && len(pt) > maxValueSize {
			clear(pt)
			err = fmt.Errorf("unsealed value larger than %d bytes", maxValueSize)
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("path", path).Warn("secretsfs: unseal failed")
			return nil, err
		}
		log.G(ctx).WithField("path", path).Debug("secretsfs: unsealed")
		return pt, nil
	})
	if err != nil {
		return nil, unsealErrno(err)
	}
	return &content{data: pt, size: int64(len(pt)), mtime: mtime}, 0
}

func sealedKey(s []byte) string {
	sum := sha256.Sum256(s)
	return "sealed\x00" + string(sum[:])
}

// load reads the source file, locally only: a pass-through content, or
// a content whose sealed field holds the sealed secret to unseal.
func (n *srcFile) load(ctx context.Context) (*content, syscall.Errno) {
	ctx = n.fsys.opCtx(ctx)
	fl, err := n.src.root.Open(n.rel)
	if err != nil {
		return nil, sourceErrno(err)
	}
	fi, err := fl.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		_ = fl.Close()
		if err != nil {
			return nil, sourceErrno(err)
		}
		return nil, syscall.ENOENT
	}
	if fi.Size() > sealed.MaxSize {
		var prefix [len(sealed.Prefix)]byte
		m, _ := fl.ReadAt(prefix[:], 0)
		if sealed.IsSealed(prefix[:m]) {
			_ = fl.Close()
			log.G(ctx).WithField("path", n.displayPath()).Warnf("secretsfs: sealed secret larger than %d bytes refused", sealed.MaxSize)
			return nil, syscall.EIO
		}
		return &content{file: fl, size: fi.Size(), mtime: fi.ModTime()}, 0
	}
	raw, err := readSmall(fl, fi.Size())
	_ = fl.Close()
	if err != nil {
		log.G(ctx).WithError(err).WithField("path", n.displayPath()).Warn("secretsfs: read source file")
		return nil, syscall.EIO
	}
	if len(raw) > sealed.MaxSize {
		// It grew past the in-memory bound between the stat and the read;
		// the next open serves it from the file.
		log.G(ctx).WithField("path", n.displayPath()).Warn("secretsfs: source file grew while being read")
		return nil, syscall.EIO
	}
	if !sealed.IsSealed(raw) {
		return &content{data: raw, size: int64(len(raw)), mtime: fi.ModTime()}, 0
	}
	// A sealed string has no whitespace; files often end in a newline.
	return &content{sealed: bytes.TrimSpace(raw), mtime: fi.ModTime()}, 0
}

// readSmall reads a file of about size bytes (at most sealed.MaxSize+1),
// in one read when it has not grown since the stat: a short read of a
// regular file means end of file.
func readSmall(fl *os.File, size int64) ([]byte, error) {
	buf := make([]byte, min(size, sealed.MaxSize)+1)
	n, err := fl.Read(buf)
	if errors.Is(err, io.EOF) || (err == nil && n < len(buf)) {
		return buf[:n], nil
	}
	if err != nil {
		return nil, err
	}
	rest, err := io.ReadAll(io.LimitReader(fl, sealed.MaxSize+1-int64(n)))
	if err != nil {
		return nil, err
	}
	return append(buf, rest...), nil
}

// ---- KBS resources ----

// kbsDir is kbs/, kbs/<repo> or kbs/<repo>/<type>. Listing is empty: the
// KBS protocol has no listing. A lookup does not contact the KBS either:
// any valid name is a file, and opening it tells whether the KBS holds it.
type kbsDir struct {
	gofs.Inode
	fsys *FS
	segs []string
}

var (
	_ gofs.NodeLookuper  = (*kbsDir)(nil)
	_ gofs.NodeReaddirer = (*kbsDir)(nil)
	_ gofs.NodeGetattrer = (*kbsDir)(nil)
)

func (n *kbsDir) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fsys.dirAttr(&out.Attr, n.fsys.mtime)
	return 0
}

func (n *kbsDir) Readdir(context.Context) (gofs.DirStream, syscall.Errno) {
	return gofs.NewListDirStream(nil), 0
}

func (n *kbsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !kbs.ValidSegment(name) {
		return nil, syscall.ENOENT
	}
	segs := append(slices.Clone(n.segs), name)
	if len(segs) < 3 {
		n.fsys.dirAttr(&out.Attr, n.fsys.mtime)
		return n.NewInode(ctx, &kbsDir{fsys: n.fsys, segs: segs}, gofs.StableAttr{Mode: fuse.S_IFDIR, Ino: ino(fuse.S_IFDIR, append([]string{"kbs"}, segs...)...)}), 0
	}
	child := &kbsFile{fsys: n.fsys, uri: "kbs:///" + strings.Join(segs, "/")}
	n.fsys.fileAttr(&out.Attr, child.attr())
	return n.NewInode(ctx, child, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino(fuse.S_IFREG, "kbs", child.uri)}), 0
}

type kbsFile struct {
	gofs.Inode
	fsys *FS
	uri  string
}

var (
	_ gofs.NodeOpener    = (*kbsFile)(nil)
	_ gofs.NodeGetattrer = (*kbsFile)(nil)
)

func (n *kbsFile) Getattr(_ context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return n.fsys.getattr(fh, out, func() (*content, syscall.Errno) { return n.attr(), 0 })
}

func (n *kbsFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return open(&n.Inode, flags, func() (*content, syscall.Errno) { return n.resolve(ctx) })
}

func (n *kbsFile) cacheKey() string { return "kbs\x00" + n.uri }

// attr describes the resource without contacting the KBS: its size when
// it is in the cache, else 0.
func (n *kbsFile) attr() *content {
	c := &content{size: unknownSize, mtime: n.fsys.mtime}
	if size, ok := cachedSize(n.fsys.cache, n.cacheKey()); ok {
		c.size = size
	}
	return c
}

func (n *kbsFile) resolve(ctx context.Context) (*content, syscall.Errno) {
	ctx = n.fsys.opCtx(ctx)
	b, err := n.fsys.cache.Get(ctx, n.cacheKey(), func(ctx context.Context) ([]byte, error) {
		b, err := n.fsys.resources.GetResource(ctx, n.uri)
		if err == nil && len(b) > maxValueSize {
			clear(b)
			err = fmt.Errorf("resource larger than %d bytes", maxValueSize)
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("resource", n.uri).Warn("secretsfs: fetch KBS resource failed")
			return nil, err
		}
		log.G(ctx).WithField("resource", n.uri).Debug("secretsfs: fetched KBS resource")
		return b, nil
	})
	if err != nil {
		return nil, fetchErrno(err)
	}
	return &content{data: b, size: int64(len(b)), mtime: n.fsys.mtime}, 0
}
