package harness

import (
	"fmt"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// MountsUnder lists the mount points at or below dir, deepest first.
func MountsUnder(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// UnmountUnder lazily unmounts (umount -l) everything mounted at or below
// dir, deepest first, until nothing is left.
func UnmountUnder(dir string) error {
	for round := 0; round < 10; round++ {
		mps, err := MountsUnder(dir)
		if err != nil {
			return fmt.Errorf("listing mounts under %s: %w", dir, err)
		}
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
				return fmt.Errorf("umount -l %s: %w", mp, err)
			}
		}
	}
	return fmt.Errorf("mounts still present under %s after 10 rounds of umount -l", dir)
}
