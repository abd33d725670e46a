package unpack

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// dirRef is an open directory of the layer and its path of real names.
type dirRef struct {
	fd   int
	path []string
}

// parentCache keeps the directory of the previous entry open: tar streams
// list a directory's children together. It stays valid until something is
// removed from the layer, since creating entries never changes where an
// existing path resolves.
type parentCache struct {
	key   string
	valid bool
	ref   *dirRef
}

func (c *parentCache) drop() {
	if c.ref != nil {
		unix.Close(c.ref.fd)
		c.ref = nil
	}
	c.valid = false
}

// parentDir resolves (creating as needed) the directory that will hold an
// entry. The result belongs to the cache and stays open until the next call.
func (e *extractor) parentDir(comps []string) (*dirRef, error) {
	key := strings.Join(comps, "/")
	if e.cache.valid && e.cache.key == key {
		return e.cache.ref, nil
	}
	fd, path, _, err := e.upper.walk(comps, e.copyDirInfo, false)
	if err != nil {
		return nil, fmt.Errorf("resolve parent directory: %w", err)
	}
	e.cache.drop()
	e.cache = parentCache{key: key, valid: true, ref: &dirRef{fd: fd, path: path}}
	return e.cache.ref, nil
}

// clearPath makes room for an entry: whatever is at name is removed, unless
// both it and the entry are directories, which merge. It reports whether a
// directory was kept.
func (e *extractor) clearPath(parent *dirRef, name string, entryIsDir bool) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(parent.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat existing path: %w", err)
	}
	if entryIsDir && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return true, nil
	}
	removed, err := removeAllAt(parent.fd, name)
	if removed {
		// The cached descriptor stays open for the current entry, but
		// later entries must resolve again.
		e.cache.valid = false
	}
	if err != nil {
		return false, fmt.Errorf("replace existing path: %w", err)
	}
	return false, nil
}

func (e *extractor) mkdir(hdr *tar.Header, parent *dirRef, comps []string, xattrs [][2]string) error {
	base := comps[len(comps)-1]
	existing, err := e.clearPath(parent, base, true)
	if err != nil {
		return err
	}
	if !existing {
		if err := unix.Mkdirat(parent.fd, base, 0o700); err != nil {
			return fmt.Errorf("create directory: %w", err)
		}
	}
	fd, err := unix.Openat(parent.fd, base, dirFlags, 0)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer unix.Close(fd)
	if err := e.setMetaFd(hdr, fd, xattrs); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat directory: %w", err)
	}
	path := append(append([]string(nil), parent.path...), base)
	e.dirs = append(e.dirs, dirTimes{name: hdr.Name, path: path, dev: st.Dev, ino: st.Ino, times: entryTimes(hdr)})
	return nil
}

func (e *extractor) regular(hdr *tar.Header, tr io.Reader, parent *dirRef, base string, xattrs [][2]string) error {
	size := hdr.Size
	switch {
	case size < 0:
		return unsafef("negative size %d", size)
	case size > e.opts.MaxEntrySize:
		return limitf("file of %d bytes exceeds the %d-byte entry limit", size, e.opts.MaxEntrySize)
	case size > e.opts.MaxTotalSize-e.total:
		return limitf("regular files exceed the %d-byte total limit", e.opts.MaxTotalSize)
	}
	e.total += size
	fd, err := unix.Openat(parent.fd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	n, err := e.copyN(f, tr, size)
	e.stats.Bytes += n
	if err == nil {
		err = e.setMetaFd(hdr, fd, xattrs)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close file: %w", cerr)
	}
	if err != nil {
		return err
	}
	e.stats.Files++
	return e.setTimesAt(hdr, parent.fd, base)
}

// copyN copies exactly n bytes through the extractor's fixed buffer,
// checking for cancellation between chunks.
func (e *extractor) copyN(dst io.Writer, src io.Reader, n int64) (int64, error) {
	var written int64
	for written < n {
		if err := e.ctx.Err(); err != nil {
			return written, err
		}
		chunk := e.buf
		if rem := n - written; rem < int64(len(chunk)) {
			chunk = chunk[:rem]
		}
		nr, rerr := src.Read(chunk)
		if nr > 0 {
			nw, werr := dst.Write(chunk[:nr])
			written += int64(nw)
			if werr != nil {
				return written, fmt.Errorf("write file contents: %w", werr)
			}
		}
		if rerr == io.EOF {
			if written < n {
				return written, fmt.Errorf("read file contents: %w", io.ErrUnexpectedEOF)
			}
			break
		}
		if rerr != nil {
			return written, fmt.Errorf("read file contents: %w", rerr)
		}
	}
	return written, nil
}

// setMetaFd applies owner, xattrs and mode through an open regular file or
// directory. Ownership goes first: chown clears setuid bits and
// security.capability.
func (e *extractor) setMetaFd(hdr *tar.Header, fd int, xattrs [][2]string) error {
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown %d:%d: %w", hdr.Uid, hdr.Gid, err)
	}
	for _, x := range xattrs {
		if err := e.xattrResult(hdr, x[0], unix.Fsetxattr(fd, x[0], []byte(x[1]), 0), true); err != nil {
			return err
		}
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod %o: %w", hdr.Mode&0o7777, err)
	}
	return nil
}

// setMetaAt applies owner, xattrs, mode and times to name in parent without
// following it if it is a symlink.
func (e *extractor) setMetaAt(hdr *tar.Header, parent *dirRef, name string, xattrs [][2]string) error {
	if err := unix.Fchownat(parent.fd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %d:%d: %w", hdr.Uid, hdr.Gid, err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(parent.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	fileOrDir := st.Mode&unix.S_IFMT == unix.S_IFREG || st.Mode&unix.S_IFMT == unix.S_IFDIR
	for _, x := range xattrs {
		err := unix.Lsetxattr(procPath(parent.fd, name), x[0], []byte(x[1]), 0)
		if err := e.xattrResult(hdr, x[0], err, fileOrDir); err != nil {
			return err
		}
	}
	// fchmodat cannot refuse to follow a symlink, so symlinks keep their
	// mode (Linux ignores it); anything else was just checked not to be one.
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(parent.fd, name, uint32(hdr.Mode)&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %o: %w", hdr.Mode&0o7777, err)
		}
	}
	return e.setTimesAt(hdr, parent.fd, name)
}

func (e *extractor) setTimesAt(hdr *tar.Header, dirfd int, name string) error {
	ts := entryTimes(hdr)
	if err := unix.UtimesNanoAt(dirfd, name, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// xattrResult tolerates the xattr failures containerd tolerates: a file
// system without xattr support, and user.* on something that is neither a
// regular file nor a directory.
func (e *extractor) xattrResult(hdr *tar.Header, name string, err error, fileOrDir bool) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOTSUP),
		errors.Is(err, unix.EPERM) && strings.HasPrefix(name, "user.") && !fileOrDir:
		log.G(e.ctx).WithError(err).WithField("entry", hdr.Name).Warnf("xattr %q ignored", name)
		return nil
	}
	return fmt.Errorf("set xattr %q: %w", name, err)
}

func (e *extractor) whiteout(hdr *tar.Header, parentComps []string, base string) error {
	if base == whiteoutOpaqueDir {
		parent, err := e.parentDir(parentComps)
		if err != nil {
			return err
		}
		if err := unix.Fsetxattr(parent.fd, overlayOpaqueXattr, []byte{'y'}, 0); err != nil {
			return fmt.Errorf("mark directory opaque: %w", err)
		}
		key := strings.Join(parent.path, "/")
		if _, ok := e.opaque[key]; !ok {
			e.opaque[key] = struct{}{}
			e.stats.OpaqueDirs++
		}
		return nil
	}
	if strings.HasPrefix(base, whiteoutMetaPrefix) {
		log.G(e.ctx).Debugf("whiteout meta entry %q ignored", hdr.Name)
		return nil
	}
	name := base[len(whiteoutPrefix):]
	if name == "" || name == "." || name == ".." {
		return unsafef("invalid whiteout name %q", base)
	}
	parent, err := e.parentDir(parentComps)
	if err != nil {
		return err
	}
	if _, err := e.clearPath(parent, name, false); err != nil {
		return err
	}
	if err := unix.Mknodat(parent.fd, name, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("create whiteout device: %w", err)
	}
	if err := unix.Fchownat(parent.fd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown whiteout device %d:%d: %w", hdr.Uid, hdr.Gid, err)
	}
	e.stats.Whiteouts++
	return nil
}

// hardlink links name in parent to the entry's target, which must be a
// non-directory of this layer or, failing that, of a lower layer (then it
// is copied up first).
func (e *extractor) hardlink(hdr *tar.Header, parent *dirRef, name string) error {
	tcomps, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
	}
	if len(tcomps) == 0 {
		return unsafef("hardlink target is the layer root")
	}
	tbase := tcomps[len(tcomps)-1]
	if strings.HasPrefix(tbase, whiteoutPrefix) {
		return unsafef("hardlink target %q is a whiteout", hdr.Linkname)
	}
	tfd, _, opaque, err := e.upper.walk(tcomps[:len(tcomps)-1], nil, true)
	hidden := opaque
	found := false
	switch {
	case err == nil:
		var st unix.Stat_t
		serr := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(serr, unix.ENOENT):
		case serr != nil:
			unix.Close(tfd)
			return fmt.Errorf("stat hardlink target %q: %w", hdr.Linkname, serr)
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			unix.Close(tfd)
			return unsafef("hardlink target %q is a directory", hdr.Linkname)
		case isWhiteout(&st):
			hidden = true
		default:
			found = true
		}
		if !found {
			unix.Close(tfd)
		}
	case errors.Is(err, errWhitedOut):
		hidden = true
	case !isNotFound(err):
		return fmt.Errorf("resolve hardlink target %q: %w", hdr.Linkname, err)
	}
	if !found {
		if hidden {
			return fmt.Errorf("hardlink target %q is whited out: %w", hdr.Linkname, errdefs.ErrNotFound)
		}
		if tfd, err = e.copyUp(hdr, tcomps); err != nil {
			return err
		}
	}
	defer unix.Close(tfd)
	if err := unix.Linkat(tfd, tbase, parent.fd, name, 0); err != nil {
		return fmt.Errorf("link to %q: %w", hdr.Linkname, err)
	}
	return nil
}

// copyUp finds a hardlink target in the lower layers, top first, copies it
// into the layer at the same path and returns its directory.
func (e *extractor) copyUp(hdr *tar.Header, tcomps []string) (int, error) {
	tbase := tcomps[len(tcomps)-1]
	for _, pt := range e.parents {
		pfd, ppath, opaque, err := pt.walk(tcomps[:len(tcomps)-1], nil, true)
		if err != nil {
			if errors.Is(err, errWhitedOut) {
				break
			}
			if isNotFound(err) {
				continue
			}
			return -1, fmt.Errorf("resolve hardlink target %q in %s: %w", hdr.Linkname, pt.path, err)
		}
		var st unix.Stat_t
		serr := unix.Fstatat(pfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(serr, unix.ENOENT) {
			unix.Close(pfd)
			if opaque {
				break
			}
			continue
		}
		if serr != nil {
			unix.Close(pfd)
			return -1, fmt.Errorf("stat hardlink target %q in %s: %w", hdr.Linkname, pt.path, serr)
		}
		if isWhiteout(&st) {
			unix.Close(pfd)
			break
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			unix.Close(pfd)
			return -1, unsafef("hardlink target %q is a directory", hdr.Linkname)
		}
		dfd, _, _, err := e.upper.walk(ppath, e.copyDirInfo, false)
		if err != nil {
			unix.Close(pfd)
			return -1, fmt.Errorf("resolve copy-up directory for hardlink target %q: %w", hdr.Linkname, err)
		}
		// The path the target resolves to in that lower layer may already
		// be in this layer (written or copied up earlier): link to it.
		var ust unix.Stat_t
		uerr := unix.Fstatat(dfd, tbase, &ust, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(uerr, unix.ENOENT):
			err = e.copyNode(pfd, dfd, tbase, &st)
		case uerr != nil:
			err = fmt.Errorf("stat: %w", uerr)
		case ust.Mode&unix.S_IFMT == unix.S_IFDIR:
			err = unsafef("hardlink target %q is a directory", hdr.Linkname)
		case isWhiteout(&ust):
			err = fmt.Errorf("whited out in this layer: %w", errdefs.ErrNotFound)
		}
		unix.Close(pfd)
		if err != nil {
			unix.Close(dfd)
			return -1, fmt.Errorf("copy up hardlink target %q from %s: %w", hdr.Linkname, pt.path, err)
		}
		return dfd, nil
	}
	return -1, fmt.Errorf("hardlink target %q not found in the layer or its parents: %w", hdr.Linkname, errdefs.ErrNotFound)
}

// copyNode copies the non-directory name of the lower directory sfd into
// the layer directory dfd, with owner, mode, xattrs and times.
func (e *extractor) copyNode(sfd, dfd int, name string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := e.copyFile(sfd, dfd, name, st.Size); err != nil {
			return err
		}
	case unix.S_IFLNK:
		buf := make([]byte, maxPathLen+1)
		n, err := unix.Readlinkat(sfd, name, buf)
		if err != nil {
			return fmt.Errorf("read symlink: %w", err)
		}
		if err := unix.Symlinkat(string(buf[:n]), dfd, name); err != nil {
			return fmt.Errorf("create symlink: %w", err)
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if st.Mode&unix.S_IFMT != unix.S_IFIFO && !e.opts.AllowDevices {
			return unsafef("hardlink target is a device node")
		}
		if err := unix.Mknodat(dfd, name, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("create node: %w", err)
		}
	default:
		return unsafef("hardlink target has unsupported file type %o", st.Mode&unix.S_IFMT)
	}
	if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := copyXattrs(procPath(sfd, name), procPath(dfd, name)); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(dfd, name, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func (e *extractor) copyFile(sfd, dfd int, name string, size int64) error {
	switch {
	case size > e.opts.MaxEntrySize:
		return limitf("copied-up file of %d bytes exceeds the %d-byte entry limit", size, e.opts.MaxEntrySize)
	case size > e.opts.MaxTotalSize-e.total:
		return limitf("regular files exceed the %d-byte total limit", e.opts.MaxTotalSize)
	}
	e.total += size
	rfd, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	src := os.NewFile(uintptr(rfd), name)
	defer src.Close()
	wfd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create copy: %w", err)
	}
	dst := os.NewFile(uintptr(wfd), name)
	// File to file: the kernel copies (copy_file_range), nothing is buffered here.
	n, err := io.Copy(dst, io.LimitReader(src, size))
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy contents: %w", err)
	}
	if n != size {
		return fmt.Errorf("copy contents: %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	return nil
}

// copyXattrs copies the xattrs of src to dst (both paths that are not
// followed), except overlayfs metadata, which belongs to the lower layer.
func copyXattrs(src, dst string) error {
	size, err := unix.Llistxattr(src, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	if size == 0 {
		return nil
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(src, buf); err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for name := range strings.SplitSeq(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" || strings.HasPrefix(name, "trusted.overlay") || strings.HasPrefix(name, "user.overlay") {
			continue
		}
		vsize, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return fmt.Errorf("get xattr %q: %w", name, err)
		}
		val := make([]byte, vsize)
		if vsize, err = unix.Lgetxattr(src, name, val); err != nil {
			return fmt.Errorf("get xattr %q: %w", name, err)
		}
		if err := unix.Lsetxattr(dst, name, val[:vsize], 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("set xattr %q: %w", name, err)
		}
	}
	return nil
}

// copyDirInfo gives a directory created implicitly as a parent the owner,
// mode, xattrs and times of the same directory in the highest lower layer
// that has it, as containerd's applier does, so the merged view does not
// change. Without a lower directory it gets root:root 0755.
func (e *extractor) copyDirInfo(parentFd int, name string, fd int, path []string) error {
	for _, pt := range e.parents {
		pfd, _, _, err := pt.walk(path, nil, false)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			// Replaced by a non-directory, whited out, or reachable
			// only through a link escaping that layer: keep defaults.
			log.G(e.ctx).WithError(err).Debugf("parent directory %q: not copying lower attributes", strings.Join(path, "/"))
			break
		}
		err = copyDirAttrs(pfd, parentFd, name, fd)
		unix.Close(pfd)
		return err
	}
	if err := unix.Fchmod(fd, 0o755); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

func copyDirAttrs(src, parentFd int, name string, fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return fmt.Errorf("stat lower directory: %w", err)
	}
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := copyXattrs(procPath(src, "."), procPath(parentFd, name)); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(parentFd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// setDirTimes applies directory times last, as containerd does, skipping
// directories that a later entry removed or replaced.
func (e *extractor) setDirTimes() error {
	for _, d := range e.dirs {
		pfd, err := e.upper.openPath(d.path[:len(d.path)-1])
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return &EntryError{Entry: d.name, Err: fmt.Errorf("set directory times: %w", err)}
		}
		base := d.path[len(d.path)-1]
		var st unix.Stat_t
		err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Dev == d.dev && st.Ino == d.ino {
			err = unix.UtimesNanoAt(pfd, base, d.times[:], unix.AT_SYMLINK_NOFOLLOW)
		} else if errors.Is(err, unix.ENOENT) || err == nil {
			err = nil
		}
		unix.Close(pfd)
		if err != nil {
			return &EntryError{Entry: d.name, Err: fmt.Errorf("set directory times: %w", err)}
		}
	}
	return nil
}
