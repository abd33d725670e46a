package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/internal/fuseutil"
)

// Whiteout names of the OCI layer format, presented the way overlayfs
// expects them in a lowerdir.
const (
	whiteoutPrefix    = ".wh."
	whiteoutOpaqueDir = ".wh..wh..opq"
	whiteoutMeta      = ".wh..wh."
)

// MountOptions configure Mount.
type MountOptions struct {
	// OpaqueXattrs are the xattrs set to "y" on a directory the layer
	// makes opaque (default trusted.overlay.opaque; add user.overlay.opaque
	// for overlay mounts with userxattr).
	OpaqueXattrs []string
	// AttrTimeout and EntryTimeout are the kernel's cache lifetimes
	// (default 60s: a layer never changes).
	AttrTimeout, EntryTimeout time.Duration
	// DisablePassthrough keeps every read on the FUSE read path. By
	// default Mount detects once whether the kernel accepts passthrough
	// backing files and, where it does, serves each regular file opened
	// after the layer's Complete from a verified plain copy by passthrough
	// (see passthrough.go).
	DisablePassthrough bool
}

// Mounted is a layer mounted read-only with FUSE.
type Mounted struct {
	dir    string
	server *fuse.Server
	tree   *tree
	once   sync.Once
	err    error
}

// Mount serves layer at dir (which must exist) until Unmount. It uses
// mount(2) directly (no fusermount). Directories, regular files, symlinks,
// hardlinks, devices, fifos and xattrs come from the TOC; whiteout files
// (.wh.NAME) appear as 0/0 character devices NAME and a .wh..wh..opq entry
// makes its directory carry the opaque xattrs, as overlayfs reads a
// lowerdir. Reads are served by the verifying layer: a chunk that fails
// verification gives EIO.
func Mount(ctx context.Context, dir string, layer *Layer, opts MountOptions) (*Mounted, error) {
	if len(opts.OpaqueXattrs) == 0 {
		opts.OpaqueXattrs = []string{"trusted.overlay.opaque"}
	}
	if opts.AttrTimeout <= 0 {
		opts.AttrTimeout = time.Minute
	}
	if opts.EntryTimeout <= 0 {
		opts.EntryTimeout = time.Minute
	}
	rootEntry, ok := layer.Lookup("")
	if !ok {
		return nil, errors.New("fusefs: layer has no root directory")
	}
	t := &tree{layer: layer, opts: opts, inos: map[*estargz.TOCEntry]uint64{}, nodes: map[*estargz.TOCEntry]*gofs.Inode{}}
	root := &node{tree: t, e: rootEntry}
	at, et := opts.AttrTimeout, opts.EntryTimeout
	server, err := gofs.Mount(dir, root, &gofs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			AllowOther:        true, // containers run as other users
			Options:           []string{"ro", "default_permissions"},
			FsName:            "cocoon-lazy:" + layer.Digest().Encoded()[:12],
			Name:              "cocoon-lazy",
			MaxReadAhead:      1 << 20,
			MaxWrite:          1 << 20, // also the largest read request: fewer round trips
		},
		AttrTimeout:  &at,
		EntryTimeout: &et,
		Logger:       nil,
	})
	if err != nil {
		return nil, fmt.Errorf("fusefs: mount layer %s at %s: %w", layer.Digest(), dir, err)
	}
	lg := log.G(ctx).WithField("layer", layer.Digest()).WithField("mountpoint", dir)
	if opts.DisablePassthrough {
		lg = lg.WithField("passthrough", "disabled")
	} else if perr := detectPassthrough(server); perr != nil {
		lg = lg.WithField("passthrough", perr.Error())
	} else {
		t.server = server
		t.passthrough.Store(true)
		lg = lg.WithField("passthrough", "available")
	}
	lg.Info("lazy layer mounted")
	return &Mounted{dir: dir, server: server, tree: t}, nil
}

// Passthrough reports whether files of the completed layer are served by
// FUSE passthrough (detected at Mount; off again if the cache directory's
// files cannot back FUSE files).
func (m *Mounted) Passthrough() bool { return m.tree.passthrough.Load() }

// Dir returns the mount point.
func (m *Mounted) Dir() string { return m.dir }

// Unmount unmounts and waits for the server to stop. A busy mount is
// detached lazily (it never outlives the call in the namespace) and the
// error is returned.
func (m *Mounted) Unmount() error {
	m.once.Do(func() {
		if err := fuseutil.Unmount(m.server, m.dir); err != nil {
			m.err = fmt.Errorf("fusefs: unmount %s: %w", m.dir, err)
		}
		m.server.Wait()
	})
	return m.err
}

// tree is what the nodes of one mount share.
type tree struct {
	layer *Layer
	opts  MountOptions
	mu    sync.Mutex
	inos  map[*estargz.TOCEntry]uint64
	nodes map[*estargz.TOCEntry]*gofs.Inode // hardlinks share one inode

	passthrough atomic.Bool
	server      *fuse.Server // set with passthrough
	dirChecked  bool         // the plain copies' filesystem was probed (under mu)
	reads       atomic.Int64 // read requests served by Read

	firstPassthrough sync.Once
}

// backingOK probes, once per mount, whether f (a plain copy) can back a
// FUSE file: its filesystem may be stacked too deep (ELOOP). On failure
// passthrough is turned off for the mount, before go-fuse registers any
// file of that directory (go-fuse would turn it off for all files after a
// failed registration, leaving open passthrough files beside new caching
// opens of the same inode, which the kernel refuses).
func (t *tree) backingOK(ctx context.Context, f *os.File) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.dirChecked {
		t.dirChecked = true
		if err := probeBacking(t.server, int(f.Fd())); err != nil { //nolint:gosec // file descriptors fit int
			log.G(ctx).WithField("layer", t.layer.Digest()).WithField("path", f.Name()).WithError(err).Warn("lazy layer: plain copies cannot back FUSE files; passthrough off")
			t.passthrough.Store(false)
		}
	}
	return t.passthrough.Load()
}

func (t *tree) ino(e *estargz.TOCEntry) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.inos[e]; ok {
		return n
	}
	n := uint64(len(t.inos)) + 2 // 1 is the root
	t.inos[e] = n
	return n
}

// node is one TOC entry. whiteout marks a .wh.NAME entry shown as NAME.
type node struct {
	gofs.Inode
	tree     *tree
	e        *estargz.TOCEntry
	whiteout bool
	opaque   bool

	// Open files of this inode by mode (under openMu): the kernel refuses
	// a passthrough open while a caching one is live and the reverse.
	openMu           sync.Mutex
	cachingOpens     int
	passthroughOpens int
}

var (
	_ gofs.NodeOnAdder     = (*node)(nil)
	_ gofs.NodeGetattrer   = (*node)(nil)
	_ gofs.NodeOpener      = (*node)(nil)
	_ gofs.NodeReader      = (*node)(nil)
	_ gofs.NodeReadlinker  = (*node)(nil)
	_ gofs.NodeGetxattrer  = (*node)(nil)
	_ gofs.NodeListxattrer = (*node)(nil)
)

// OnAdd builds the whole tree under the root once, when it is mounted.
func (n *node) OnAdd(ctx context.Context) {
	if n.e.Type == "dir" && n.IsRoot() {
		n.tree.nodes[n.e] = n.EmbeddedInode()
		n.addChildren(ctx)
	}
}

func (n *node) addChildren(ctx context.Context) {
	n.e.ForeachChild(func(name string, ce *estargz.TOCEntry) bool {
		if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
			return true
		}
		if n.IsRoot() && (name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark) {
			return true // format markers, not content
		}
		if name == whiteoutOpaqueDir {
			n.opaque = true
			return true
		}
		if strings.HasPrefix(name, whiteoutMeta) {
			return true // other AUFS metadata (.wh..wh.plnk ...) is not content
		}
		whiteout := false
		if strings.HasPrefix(name, whiteoutPrefix) {
			name, whiteout = strings.TrimPrefix(name, whiteoutPrefix), true
			if name == "" || name == "." || name == ".." {
				return true
			}
		}
		var ch *gofs.Inode
		if !whiteout {
			n.tree.mu.Lock()
			ch = n.tree.nodes[ce]
			n.tree.mu.Unlock()
		}
		if ch != nil && ce.Type == "dir" {
			return true // a hardlink to a directory: shown once, never as a loop
		}
		if ch == nil {
			cn := &node{tree: n.tree, e: ce, whiteout: whiteout}
			mode := cn.fileType()
			ino := n.tree.ino(ce) // a whiteout's entry is shown only as that whiteout
			ch = n.NewPersistentInode(ctx, cn, gofs.StableAttr{Mode: mode, Ino: ino})
			if !whiteout {
				n.tree.mu.Lock()
				n.tree.nodes[ce] = ch
				n.tree.mu.Unlock()
			}
			if ce.Type == "dir" {
				cn.addChildren(ctx)
			}
		}
		n.AddChild(name, ch, true)
		return true
	})
}

// fileType is the S_IFMT bits of the entry.
func (n *node) fileType() uint32 {
	if n.whiteout {
		return syscall.S_IFCHR
	}
	switch n.e.Type {
	case "dir":
		return syscall.S_IFDIR
	case "symlink":
		return syscall.S_IFLNK
	case "char":
		return syscall.S_IFCHR
	case "block":
		return syscall.S_IFBLK
	case "fifo":
		return syscall.S_IFIFO
	default:
		return syscall.S_IFREG
	}
}

func (n *node) Getattr(_ context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	out.SetTimeout(n.tree.opts.AttrTimeout)
	return 0
}

func (n *node) fill(a *fuse.Attr) {
	e := n.e
	a.Ino = n.StableAttr().Ino
	a.Mode = n.fileType()
	a.Owner = fuse.Owner{Uid: uint32(e.UID), Gid: uint32(e.GID)} //nolint:gosec // IDs from tar headers fit 32 bits; larger ones wrap as in the kernel
	mt := e.ModTime()
	if n.whiteout {
		a.Nlink = 1 // a 0/0 character device: overlayfs's whiteout
	} else {
		a.Mode |= uint32(e.Mode) & 0o7777   //nolint:gosec // masked to the permission bits
		a.Nlink = uint32(max(e.NumLink, 1)) //nolint:gosec // link counts are small
		switch e.Type {
		case "reg":
			a.Size = uint64(e.Size) //nolint:gosec // checked non-negative at Open
		case "symlink":
			a.Size = uint64(len(e.LinkName))
		case "dir":
			a.Size = 4096
		case "char", "block":
			a.Rdev = uint32(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor))) //nolint:gosec // device numbers from tar headers
		}
	}
	if !mt.IsZero() {
		a.SetTimes(&mt, &mt, &mt)
	}
	a.Blksize = 4096
	a.Blocks = (a.Size + 511) / 512
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.whiteout || n.e.Type != "reg" {
		return nil, 0, syscall.EINVAL
	}
	n.openMu.Lock()
	defer n.openMu.Unlock()
	t := n.tree
	if n.cachingOpens == 0 && n.e.Size > 0 && t.passthrough.Load() && t.layer.Local() {
		f, err := t.layer.openPlain(ctx, n.e)
		if err == nil && t.backingOK(ctx, f) {
			n.passthroughOpens++
			t.firstPassthrough.Do(func() {
				log.G(ctx).WithField("layer", t.layer.Digest()).WithField("file", n.e.Name).Info("lazy layer: serving completed files by FUSE passthrough")
			})
			return &passthroughFile{n: n, f: f}, 0, 0
		}
		if f != nil {
			f.Close()
		}
		if n.passthroughOpens > 0 {
			// Open in passthrough mode already: a caching open would fail.
			return nil, 0, syscall.EIO
		}
	}
	n.cachingOpens++
	// The content never changes: let the page cache keep it across opens.
	return &cachingFile{n: n}, fuse.FOPEN_KEEP_CACHE, 0
}

// cachingFile is an open file read through Read and the page cache.
type cachingFile struct{ n *node }

var _ gofs.FileReleaser = (*cachingFile)(nil)

func (f *cachingFile) Release(context.Context) syscall.Errno {
	f.n.openMu.Lock()
	defer f.n.openMu.Unlock()
	f.n.cachingOpens--
	return 0
}

// passthroughFile is an open file the kernel reads from the plain copy f.
// go-fuse registers f as the inode's backing file at its first open
// (the kernel keeps its own reference) and releases it after the last.
type passthroughFile struct {
	n *node
	f *os.File
}

var (
	_ gofs.FileReleaser        = (*passthroughFile)(nil)
	_ gofs.FilePassthroughFder = (*passthroughFile)(nil)
)

func (f *passthroughFile) PassthroughFd() (int, bool) { return int(f.f.Fd()), true } //nolint:gosec // file descriptors fit int

func (f *passthroughFile) Release(context.Context) syscall.Errno {
	f.n.openMu.Lock()
	defer f.n.openMu.Unlock()
	f.n.passthroughOpens--
	f.f.Close()
	return 0
}

func (n *node) Read(ctx context.Context, _ gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.whiteout || n.e.Type != "reg" {
		return nil, syscall.EINVAL
	}
	n.tree.reads.Add(1)
	parts, err := n.tree.layer.slices(ctx, n.e, int64(len(dest)), off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, syscall.EIO
	}
	if len(parts) == 1 {
		// Within one chunk: send the cached bytes without a copy.
		return fuse.ReadResultData(parts[0]), 0
	}
	got := 0
	for _, b := range parts {
		got += copy(dest[got:], b)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *node) Readlink(context.Context) ([]byte, syscall.Errno) {
	if n.e.Type != "symlink" || n.whiteout {
		return nil, syscall.EINVAL
	}
	return []byte(n.e.LinkName), 0
}

// xattrs are the entry's own (minus overlay's, which a layer must not
// forge) plus the opaque marker.
func (n *node) xattrs() map[string][]byte {
	if n.whiteout {
		return nil
	}
	out := map[string][]byte{}
	for k, v := range n.e.Xattrs {
		if strings.HasPrefix(k, "trusted.overlay.") || strings.HasPrefix(k, "user.overlay.") {
			continue
		}
		out[k] = v
	}
	if n.opaque {
		for _, k := range n.tree.opts.OpaqueXattrs {
			out[k] = []byte("y")
		}
	}
	return out
}

func (n *node) Getxattr(_ context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := n.xattrs()[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE //nolint:gosec // xattr values are small
	}
	return uint32(copy(dest, v)), 0 //nolint:gosec // xattr values are small
}

func (n *node) Listxattr(_ context.Context, dest []byte) (uint32, syscall.Errno) {
	var b []byte
	for k := range n.xattrs() {
		b = append(b, k...)
		b = append(b, 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE //nolint:gosec // xattr lists are small
	}
	return uint32(copy(dest, b)), 0 //nolint:gosec // xattr lists are small
}
