package cryptvol

import "golang.org/x/sys/unix"

type unixStatfs = unix.Statfs_t

func statfs(p string, st *unix.Statfs_t) error { return unix.Statfs(p, st) }

func fsName(st unix.Statfs_t) string {
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	}
	return "other"
}
