// Package unpack extracts an uncompressed OCI/Docker layer tar into an empty
// directory in overlayfs upperdir form: whiteouts become 0/0 character
// devices and opaque markers become the trusted.overlay.opaque xattr, as
// containerd's overlay applier (archive.Apply with OverlayConvertWhiteout)
// produces them.
//
// The tar stream is untrusted. This package must never create, modify,
// follow or read anything outside the target directory (apart from reading
// the lower layer directories named in Options.Parents), must never write
// through a symlink, must never forge overlayfs metadata on behalf of the
// layer, and must never hold a whole file or layer in memory. Every path is
// resolved one component at a time relative to directory file descriptors
// with O_NOFOLLOW; symlinks created by the layer are followed only as a
// container would see them with the target directory as its root, and a
// resolution that would climb above that root is refused.
//
// Extract does not decide whether the bytes are authentic: the caller must
// discard the directory unless both Extract and the digest verification of
// the stream (see package layer) succeed.
package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Defaults applied when the corresponding Options field is zero.
const (
	DefaultMaxEntrySize  int64 = 8 << 30
	DefaultMaxTotalSize  int64 = 64 << 30
	DefaultMaxEntries          = 1 << 20
	DefaultMaxHeaderSize       = 1 << 20
)

// maxPathLen bounds entry and link names (Linux PATH_MAX). Longer names
// could not be used by a container anyway, and bounding them bounds the work
// spent resolving one entry.
const maxPathLen = 4096

// Overlay whiteout conventions (OCI image-spec layer.md).
const (
	whiteoutPrefix     = ".wh."
	whiteoutMetaPrefix = whiteoutPrefix + whiteoutPrefix
	whiteoutOpaqueDir  = whiteoutMetaPrefix + ".opq"
	overlayOpaqueXattr = "trusted.overlay.opaque"
	paxSchilyXattr     = "SCHILY.xattr."
)

var (
	// ErrUnsafeEntry marks a layer entry refused because applying it could
	// escape the target directory, forge overlay metadata or create
	// something the options do not allow. It wraps errdefs.ErrInvalidArgument.
	ErrUnsafeEntry = fmt.Errorf("unsafe layer entry: %w", errdefs.ErrInvalidArgument)
	// ErrLimitExceeded marks a layer that exceeds one of the Options
	// limits. It wraps errdefs.ErrResourceExhausted.
	ErrLimitExceeded = fmt.Errorf("layer limit exceeded: %w", errdefs.ErrResourceExhausted)
)

// Options bound and tune Extract. The zero value is safe.
type Options struct {
	// AllowDevices creates the character and block device nodes found in
	// the layer. When false (the default) such entries are refused. FIFOs
	// and whiteouts are always allowed.
	AllowDevices bool
	// MaxEntrySize is the maximum size of one regular file (default 8 GiB).
	MaxEntrySize int64
	// MaxTotalSize is the maximum sum of regular file sizes, including files
	// copied up from Parents for hardlinks (default 64 GiB).
	MaxTotalSize int64
	// MaxEntries is the maximum number of tar headers (default 1<<20).
	MaxEntries int
	// MaxHeaderSize is the maximum number of name, link name and PAX record
	// bytes of one entry (default 1 MiB; archive/tar itself refuses PAX and
	// GNU long-name blocks over 1 MiB before they reach Extract).
	MaxHeaderSize int
	// Parents are the lower layer directories, top first. They are only
	// read: to find the target of a hardlink that is not in this layer
	// (the file is copied up, then linked), and, like containerd's applier,
	// to give a directory created implicitly as a parent the owner, mode,
	// times and xattrs it has in the lower layers.
	Parents []string
}

// Stats describe what Extract wrote.
type Stats struct {
	Entries    int   // tar headers read
	Files      int   // regular files created from the layer
	Bytes      int64 // regular file bytes written from the layer
	Whiteouts  int   // whiteout devices created
	OpaqueDirs int   // directories marked opaque
}

// EntryError names the layer entry that could not be applied.
type EntryError struct {
	Entry string // the entry name as it appears in the tar header
	Err   error
}

func (e *EntryError) Error() string {
	if errors.Is(e.Err, ErrUnsafeEntry) {
		return fmt.Sprintf("unsafe layer entry %q refused: %v", e.Entry, e.Err)
	}
	return fmt.Sprintf("layer entry %q: %v", e.Entry, e.Err)
}

// Unwrap returns the cause, which may wrap ErrUnsafeEntry or ErrLimitExceeded.
func (e *EntryError) Unwrap() error { return e.Err }

// reasonError is a cause with its own message that matches a sentinel.
type reasonError struct {
	msg  string
	kind error
}

func (r *reasonError) Error() string { return r.msg }
func (r *reasonError) Unwrap() error { return r.kind }

func unsafef(format string, args ...any) error {
	return &reasonError{msg: fmt.Sprintf(format, args...), kind: ErrUnsafeEntry}
}

func limitf(format string, args ...any) error {
	return &reasonError{msg: fmt.Sprintf(format, args...), kind: ErrLimitExceeded}
}

func (o Options) withDefaults() Options {
	if o.MaxEntrySize <= 0 {
		o.MaxEntrySize = DefaultMaxEntrySize
	}
	if o.MaxTotalSize <= 0 {
		o.MaxTotalSize = DefaultMaxTotalSize
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxHeaderSize <= 0 {
		o.MaxHeaderSize = DefaultMaxHeaderSize
	}
	return o
}

// dirTimes is a directory whose times are set after all entries, so that
// creating its children does not disturb them.
type dirTimes struct {
	name     string
	path     []string
	dev, ino uint64
	times    [2]unix.Timespec
}

type extractor struct {
	ctx     context.Context
	opts    Options
	upper   *tree
	parents []*tree
	stats   Stats
	total   int64 // regular file bytes including copy-ups
	buf     []byte
	dirs    []dirTimes
	opaque  map[string]struct{}
	cache   parentCache

	skippedXattrs map[string]struct{}
}

// Extract reads an uncompressed OCI/Docker layer tar from r and writes it
// into dir, which must exist and be empty, as an overlayfs upperdir. On error
// it returns at once, leaving dir partially written: the caller removes it.
// Errors about one entry are *EntryError. Cancelling ctx stops Extract
// between entries and between chunks of a file.
func Extract(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	e := &extractor{
		ctx:    log.WithLogger(ctx, log.G(ctx).WithField("dir", dir)),
		opts:   opts.withDefaults(),
		buf:    make([]byte, 256<<10),
		opaque: map[string]struct{}{},

		skippedXattrs: map[string]struct{}{},
	}
	var err error
	if e.upper, err = openTree(dir); err != nil {
		return Stats{}, fmt.Errorf("open layer directory: %w", err)
	}
	defer e.upper.close()
	defer e.cache.drop()
	if err := e.upper.checkEmpty(); err != nil {
		return Stats{}, err
	}
	for _, p := range e.opts.Parents {
		t, err := openTree(p)
		if err != nil {
			for _, t := range e.parents {
				t.close()
			}
			return Stats{}, fmt.Errorf("open parent layer: %w", err)
		}
		e.parents = append(e.parents, t)
	}
	defer func() {
		for _, t := range e.parents {
			t.close()
		}
	}()

	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return e.stats, fmt.Errorf("extract layer into %s: %w", dir, err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		// archive/tar reports ErrInsecurePath alongside a usable header
		// when GODEBUG=tarinsecurepath=0; our own checks refuse such names.
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			return e.stats, fmt.Errorf("read layer tar header after %d entries: %w", e.stats.Entries, err)
		}
		e.stats.Entries++
		if e.stats.Entries > e.opts.MaxEntries {
			return e.stats, &EntryError{Entry: hdr.Name, Err: limitf("more than %d entries", e.opts.MaxEntries)}
		}
		if err := e.entry(hdr, tr); err != nil {
			var ee *EntryError
			if errors.As(err, &ee) {
				return e.stats, err
			}
			return e.stats, &EntryError{Entry: hdr.Name, Err: err}
		}
	}
	e.cache.drop()
	if err := e.setDirTimes(); err != nil {
		return e.stats, err
	}
	return e.stats, nil
}

// cleanName splits a tar name into path components, refusing names that are
// absolute, contain NUL, are empty, too long, or contain any ".." component.
// Refusing every "..", even one that stays inside the root, is deliberate:
// layer producers never need it and it removes a class of escapes.
func cleanName(name string) ([]string, error) {
	switch {
	case name == "":
		return nil, unsafef("empty name")
	case strings.IndexByte(name, 0) >= 0:
		return nil, unsafef("name contains a NUL byte")
	case len(name) > maxPathLen:
		return nil, limitf("name longer than %d bytes", maxPathLen)
	case name[0] == '/':
		return nil, unsafef("absolute path")
	}
	var comps []string
	depth := 0
	escapes := false
	for c := range strings.SplitSeq(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			depth--
			if depth < 0 {
				escapes = true
			}
			comps = append(comps, c)
			continue
		}
		depth++
		comps = append(comps, c)
	}
	for _, c := range comps {
		if c == ".." {
			if escapes {
				return nil, unsafef("path escapes the layer root")
			}
			return nil, unsafef(`path has a ".." component`)
		}
	}
	return comps, nil
}

func headerSize(hdr *tar.Header) int {
	n := len(hdr.Name) + len(hdr.Linkname)
	for k, v := range hdr.PAXRecords {
		n += len(k) + len(v)
	}
	return n
}

// entryXattrs returns the SCHILY.xattr records to apply, sorted, refusing
// any that would forge overlayfs metadata. Other namespaces than user.,
// trusted. and security.capability are skipped with a warning.
func (e *extractor) entryXattrs(hdr *tar.Header) ([][2]string, error) {
	var out [][2]string
	for k, v := range hdr.PAXRecords {
		if !strings.HasPrefix(k, paxSchilyXattr) {
			continue
		}
		name := k[len(paxSchilyXattr):]
		switch {
		case strings.HasPrefix(name, "trusted.overlay"), strings.HasPrefix(name, "user.overlay"):
			return nil, unsafef("xattr %q would forge overlayfs metadata", name)
		case strings.HasPrefix(name, "user."), strings.HasPrefix(name, "trusted."), name == "security.capability":
			out = append(out, [2]string{name, v})
		default:
			// Warn once per name: a layer may carry ACLs on every file.
			if _, seen := e.skippedXattrs[name]; !seen {
				e.skippedXattrs[name] = struct{}{}
				log.G(e.ctx).WithField("entry", hdr.Name).Warnf("xattr %q not in the allowed namespaces; ignored in this layer", name)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out, nil
}

func checkOwner(hdr *tar.Header) error {
	// (uid_t)-1 means "leave unchanged" to chown; refuse it and anything
	// that does not fit.
	if hdr.Uid < 0 || hdr.Uid >= math.MaxUint32 || hdr.Gid < 0 || hdr.Gid >= math.MaxUint32 {
		return unsafef("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	return nil
}

func boundTime(t time.Time) time.Time {
	if t.Before(time.Unix(0, 0)) || t.After(time.Unix(0, math.MaxInt64)) {
		return time.Unix(0, 0)
	}
	return t
}

// entryTimes returns atime and mtime as containerd applies them: the access
// time is the later of the two, and out-of-range times become the epoch.
func entryTimes(hdr *tar.Header) [2]unix.Timespec {
	at := hdr.AccessTime
	if at.Before(hdr.ModTime) {
		at = hdr.ModTime
	}
	return [2]unix.Timespec{
		unix.NsecToTimespec(boundTime(at).UnixNano()),
		unix.NsecToTimespec(boundTime(hdr.ModTime).UnixNano()),
	}
}

func (e *extractor) entry(hdr *tar.Header, tr io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		log.G(e.ctx).Debug("PAX global extended header ignored")
		return nil
	}
	if n := headerSize(hdr); n > e.opts.MaxHeaderSize {
		return limitf("header of %d bytes exceeds %d", n, e.opts.MaxHeaderSize)
	}
	comps, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		if hdr.Typeflag == tar.TypeDir {
			log.G(e.ctx).Debugf("entry %q ignored: resolves to the layer root", hdr.Name)
			return nil
		}
		return unsafef("non-directory entry resolves to the layer root")
	}
	xattrs, err := e.entryXattrs(hdr)
	if err != nil {
		return err
	}
	if err := checkOwner(hdr); err != nil {
		return err
	}
	base := comps[len(comps)-1]
	if strings.HasPrefix(base, whiteoutPrefix) {
		return e.whiteout(hdr, comps[:len(comps)-1], base)
	}

	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	case tar.TypeChar, tar.TypeBlock:
		if !e.opts.AllowDevices {
			return unsafef("device node not allowed")
		}
		if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
			return unsafef("device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
	default:
		return unsafef("unsupported entry type %q", hdr.Typeflag)
	}

	parent, err := e.parentDir(comps[:len(comps)-1])
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return e.mkdir(hdr, parent, comps, xattrs)
	}
	if _, err := e.clearPath(parent, base, false); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		return e.regular(hdr, tr, parent, base, xattrs)
	case tar.TypeLink:
		// A hardlink is another name for an inode whose metadata its
		// target's entry already set. Like GNU tar and libarchive (and
		// unlike containerd), do not apply the link header's metadata:
		// a header without xattrs would otherwise chown the shared inode
		// and clear its security.capability.
		return e.hardlink(hdr, parent, base)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 || len(hdr.Linkname) > maxPathLen {
			return unsafef("invalid symlink target")
		}
		if err := unix.Symlinkat(hdr.Linkname, parent.fd, base); err != nil {
			return fmt.Errorf("create symlink: %w", err)
		}
	default: // FIFO, char, block
		mode := uint32(hdr.Mode) & 0o7777
		switch hdr.Typeflag {
		case tar.TypeFifo:
			mode |= unix.S_IFIFO
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(parent.fd, base, mode, int(dev)); err != nil {
			return fmt.Errorf("create device or fifo: %w", err)
		}
	}
	return e.setMetaAt(hdr, parent, base, xattrs)
}
