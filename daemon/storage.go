package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

// StorageConfig puts cocoond's image storage (snapshots and staging) on an
// encrypted scratch volume on host disk instead of guest memory. The volume
// is served by a re-execution of the running binary, so a binary that runs
// the daemon with a Volume calls detached.RunEngineIfRequested first thing
// in main (cocoond does).
type StorageConfig struct {
	// Volume is a block device or file holding only ciphertext; empty keeps
	// the storage directly under root.
	Volume string `toml:"volume"`
	// Size of a file backing, e.g. "20G" (a block device uses its size); a
	// go-units size as unpack's (flagutil.ParseSize).
	Size string `toml:"size"`
	// Engine: auto, dmcrypt or userspace.
	Engine string `toml:"engine"`
}

// storageDir returns where snapshots and staging live. With a storage
// volume, it is the volume's mount point under root: an ephemeral LUKS2
// volume (random key, header in memory) served by a detached engine process
// (cryptvol/detached, a re-execution of this binary), so that it outlives a
// cocoond restart. On restart the mounted volume is found and reused
// (restored); after a reboot the key is gone and a fresh volume is made.
// `cocoonctl volume destroy ROOT/storage` tears it down once cocoond and its
// containers are stopped. Cancelling ctx (cocoond's SIGTERM) while the
// volume is being created sends the engine process SIGTERM.
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
	var size int64
	if cfg.Size != "" {
		if size, err = flagutil.ParseSize(cfg.Size); err != nil {
			return "", fmt.Errorf("storage.size: %w", err)
		}
	}
	engine := cfg.Engine
	if engine == "" {
		engine = cryptvol.EngineAuto
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return "", err
	}
	s, err := detached.Start(ctx, detached.Request{
		Op: detached.OpCreate, Backing: cfg.Volume, Size: size, MountDir: mnt, Engine: engine, StateDir: detached.DefaultStateDir,
	}, nil)
	if err != nil {
		return "", fmt.Errorf("create encrypted storage volume on %s: %w", cfg.Volume, err)
	}
	log.G(ctx).WithFields(log.Fields{"mount": mnt, "volume": cfg.Volume, "engine_pid": s.PID, "engine_log": s.Log}).Info("image storage on an encrypted volume (random key and LUKS2 header in memory only)")
	return mnt, nil
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
