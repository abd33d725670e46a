// Package fuseutil holds what cocoon's FUSE filesystems (fusefs, its
// server, secretsfs, snapshotter/lazysource) do alike to their mounts.
package fuseutil

import (
	"fmt"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Unmount unmounts srv's mount at dir. If the kernel refuses (the mount is
// busy) the mount is detached lazily, so it never outlives the call in the
// namespace, and the refusal is still returned.
func Unmount(srv *fuse.Server, dir string) error {
	err := srv.Unmount()
	if err == nil {
		return nil
	}
	if derr := unix.Unmount(dir, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("%w; lazy unmount: %w", err, derr)
	}
	return fmt.Errorf("%w (mount detached lazily)", err)
}

// DetachStale lazily unmounts whatever is mounted at dir (a FUSE mount
// whose server died answers ENOTCONN to everything) and reports whether
// there was something; not being a mount point is fine.
func DetachStale(dir string) bool {
	return unix.Unmount(dir, unix.MNT_DETACH) == nil
}
