package unpack

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// maxSymlinks bounds symlink expansions in one resolution (Linux MAXSYMLINKS).
const maxSymlinks = 40

const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// errWhitedOut reports that a path crosses a whiteout device: below it, the
// lower layers are hidden.
var errWhitedOut = errors.New("path is whited out")

// tree is a directory used as a root: the layer being written, or a lower
// layer that is only read.
type tree struct {
	fd   int
	path string
}

func openTree(path string) (*tree, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &tree{fd: fd, path: path}, nil
}

func (t *tree) close() { unix.Close(t.fd) }

func (t *tree) checkEmpty() error {
	fd, err := unix.Openat(t.fd, ".", dirFlags, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: t.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), t.path)
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("list layer directory: %w", err)
	}
	if len(names) > 0 {
		return fmt.Errorf("layer directory %s is not empty: %w", t.path, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// dup returns a new descriptor of the tree root.
func (t *tree) dup() (int, error) {
	fd, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup %s: %w", t.path, err)
	}
	return fd, nil
}

// openPath opens a directory of t by a path of real directories, following
// no symlink at all.
func (t *tree) openPath(path []string) (int, error) {
	cur, err := t.dup()
	if err != nil {
		return -1, err
	}
	for i, c := range path {
		next, err := unix.Openat(cur, c, dirFlags, 0)
		unix.Close(cur)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", strings.Join(path[:i+1], "/"), err)
		}
		cur = next
	}
	return cur, nil
}

// mkdirFunc is called for each directory that walk creates, with the
// directory's parent, name, an open descriptor and its path in the tree.
type mkdirFunc func(parentFd int, name string, fd int, path []string) error

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, errWhitedOut)
}

// walk resolves comps to a directory of t and returns an open descriptor of
// it (the caller closes it) and its path made of real directory names.
//
// Each component is examined with fstatat(AT_SYMLINK_NOFOLLOW) and opened
// with O_NOFOLLOW relative to its parent's descriptor, so the kernel never
// follows a link. Symlinks are expanded here, as a container would see them
// with t as its root: an absolute target restarts at t, and a ".." that
// would climb above t is refused as an escape.
//
// If mkdir is not nil, missing directories are created (mode 0755) and
// mkdir is called for each. If wantOpaque is set, the result reports
// whether any directory below the root carries the overlay opaque xattr.
func (t *tree) walk(comps []string, mkdir mkdirFunc, wantOpaque bool) (fd int, path []string, opaque bool, err error) {
	cur, err := t.dup()
	if err != nil {
		return -1, nil, false, err
	}
	defer func() {
		if err != nil {
			unix.Close(cur)
			fd = -1
		}
	}()
	queue := append([]string(nil), comps...)
	links := 0
	var st unix.Stat_t
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(path) == 0 {
				return -1, nil, false, unsafef("symlink escapes the layer root")
			}
			// cur was reached through real directories only, so its ".."
			// is the previous directory of path, inside the tree.
			next, err := unix.Openat(cur, "..", dirFlags, 0)
			if err != nil {
				return -1, nil, false, fmt.Errorf("open parent of %s: %w", strings.Join(path, "/"), err)
			}
			path = path[:len(path)-1]
			unix.Close(cur)
			cur = next
			continue
		}
		// where names the component in errors; built only when needed.
		where := func() string { return strings.Join(append(path[:len(path):len(path)], c), "/") }
		created := false
		err := unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) && mkdir != nil {
			if err := unix.Mkdirat(cur, c, 0o755); err != nil {
				return -1, nil, false, fmt.Errorf("create directory %s: %w", where(), err)
			}
			created = true
			st.Mode = unix.S_IFDIR
		} else if err != nil {
			return -1, nil, false, fmt.Errorf("%s: %w", where(), err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			next, err := unix.Openat(cur, c, dirFlags, 0)
			if err != nil {
				return -1, nil, false, fmt.Errorf("open directory %s: %w", where(), err)
			}
			parent := cur
			cur = next
			path = append(path, c)
			if created {
				err := mkdir(parent, c, cur, path)
				unix.Close(parent)
				if err != nil {
					return -1, nil, false, fmt.Errorf("directory %s: %w", strings.Join(path, "/"), err)
				}
			} else {
				unix.Close(parent)
			}
			if wantOpaque && !opaque {
				opaque = isOpaque(cur)
			}
		case unix.S_IFLNK:
			links++
			if links > maxSymlinks {
				return -1, nil, false, fmt.Errorf("%s: %w", where(), unix.ELOOP)
			}
			buf := make([]byte, maxPathLen+1)
			n, err := unix.Readlinkat(cur, c, buf)
			if err != nil {
				return -1, nil, false, fmt.Errorf("read symlink %s: %w", where(), err)
			}
			if n > maxPathLen {
				return -1, nil, false, fmt.Errorf("symlink %s: %w", where(), unix.ENAMETOOLONG)
			}
			target := string(buf[:n])
			if strings.HasPrefix(target, "/") {
				root, err := t.dup()
				if err != nil {
					return -1, nil, false, err
				}
				unix.Close(cur)
				cur = root
				path = path[:0]
			}
			queue = append(strings.Split(target, "/"), queue...)
		default:
			if isWhiteout(&st) {
				return -1, nil, false, fmt.Errorf("%s: %w", where(), errWhitedOut)
			}
			return -1, nil, false, fmt.Errorf("%s: %w", where(), unix.ENOTDIR)
		}
	}
	return cur, path, opaque, nil
}

func isOpaque(fd int) bool {
	var b [1]byte
	n, err := unix.Fgetxattr(fd, overlayOpaqueXattr, b[:])
	return err == nil && n == 1 && b[0] == 'y'
}

// procPath names the entry name in the directory open as dirfd without
// following any link after the directory itself, for the xattr calls that
// have no *at form.
func procPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// removeAllAt removes name from the directory dirfd, recursively, without
// following symlinks. It reports whether anything was removed.
func removeAllAt(dirfd int, name string) (bool, error) {
	err := unix.Unlinkat(dirfd, name, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case !errors.Is(err, unix.EISDIR):
		return false, fmt.Errorf("remove %s: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, dirFlags, 0)
	if err != nil {
		return false, fmt.Errorf("open %s for removal: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	for {
		names, err := f.Readdirnames(1024)
		if len(names) == 0 {
			if err != nil && err != io.EOF {
				return false, fmt.Errorf("list %s for removal: %w", name, err)
			}
			break
		}
		for _, n := range names {
			if _, err := removeAllAt(fd, n); err != nil {
				return false, fmt.Errorf("in %s: %w", name, err)
			}
		}
		// Removing while reading may skip names; start over until empty.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return false, fmt.Errorf("rewind %s: %w", name, err)
		}
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return false, fmt.Errorf("remove directory %s: %w", name, err)
	}
	return true, nil
}
