package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
)

// StorageConfig puts cocoond's image storage (snapshots and staging) on an
// encrypted scratch volume on host disk instead of guest memory.
type StorageConfig struct {
	// Volume is a block device or file holding only ciphertext; empty keeps
	// the storage directly under root.
	Volume string `toml:"volume"`
	// Size of a file backing, e.g. "20G" (a block device uses its size).
	Size string `toml:"size"`
	// Engine: auto, dmcrypt or userspace.
	Engine string `toml:"engine"`
}

// storageDir returns where snapshots and staging live. With a storage
// volume, it is the volume's mount point under root: an ephemeral LUKS2
// volume (random key, header in memory) served by a detached cocoonctl
// engine process, so that it outlives a cocoond restart. On restart the
// mounted volume is found and reused (restored); after a reboot the key is
// gone and a fresh volume is made. `cocoonctl volume destroy ROOT/storage`
// tears it down once cocoond and its containers are stopped.
func storageDir(ctx context.Context, root string, cfg StorageConfig) (string, error) {
	if cfg.Volume == "" {
		return root, nil
	}
	mnt := filepath.Join(root, "storage")
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return "", err
	}
	if mounted {
		log.G(ctx).WithFields(log.Fields{"mount": mnt, "volume": cfg.Volume}).Info("encrypted storage volume restored (still mounted from the previous run)")
		return mnt, nil
	}
	cocoonctl, err := siblingBinary("cocoonctl")
	if err != nil {
		return "", err
	}
	args := []string{"volume", "create", "--backing", cfg.Volume, "--mount", mnt}
	if cfg.Size != "" {
		args = append(args, "--size", cfg.Size)
	}
	if cfg.Engine != "" {
		args = append(args, "--engine", cfg.Engine)
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return "", err
	}
	// On cancellation (cocoond's SIGTERM) cocoonctl gets SIGTERM, not
	// SIGKILL, so it can stop the engine process it started.
	cmd := exec.CommandContext(ctx, cocoonctl, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("create encrypted storage volume on %s: %w: %s", cfg.Volume, err, strings.TrimSpace(string(out)))
	}
	log.G(ctx).WithFields(log.Fields{"mount": mnt, "volume": cfg.Volume}).Info("image storage on an encrypted volume (random key and LUKS2 header in memory only)")
	return mnt, nil
}

// siblingBinary finds a cocoon binary installed next to cocoond, else on PATH.
func siblingBinary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s (needed for the storage volume) is neither next to cocoond nor on PATH", name)
	}
	return p, nil
}

// isMountPoint reports whether dir is a mount point (per mountinfo).
func isMountPoint(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(abs))
	if err != nil {
		return false, err
	}
	return len(mounts) > 0, nil
}
