package cryptvol

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Media of an emptyDir, as Kubernetes names them.
const (
	MediumDefault = ""       // encrypted ephemeral volume on a sparse backing file
	MediumMemory  = "Memory" // tmpfs: guest memory is already confidential
)

// EmptyDirOptions describes a Kubernetes-style emptyDir.
type EmptyDirOptions struct {
	// Dir is where the emptyDir is mounted; it is removed by Destroy.
	Dir string
	// SizeLimit in bytes. For MediumMemory it is the tmpfs size (0: the
	// tmpfs default of half the memory); otherwise the size of the
	// encrypted volume (0: the free space of BackingDir).
	SizeLimit int64
	// Medium is MediumDefault or MediumMemory.
	Medium string
	// BackingDir receives the sparse ciphertext file (MediumDefault).
	BackingDir string
	Engine     string
	RuntimeDir string
}

// minEmptyDirSize keeps mkfs.ext4 well inside what it can format.
const minEmptyDirSize = 8 << 20

// NewEmptyDir provisions an emptyDir with Kubernetes semantics: a directory
// writable by every user, at most SizeLimit bytes, removed at teardown
// (Destroy). The default medium is an ephemeral LUKS2 volume whose key and
// header never leave this process's memory.
func NewEmptyDir(ctx context.Context, o EmptyDirOptions) (*Volume, error) {
	if o.Dir == "" {
		return nil, errors.New("emptyDir needs a directory")
	}
	if o.SizeLimit < 0 {
		return nil, fmt.Errorf("emptyDir sizeLimit %d is negative", o.SizeLimit)
	}
	switch o.Medium {
	case MediumMemory:
		if err := os.MkdirAll(o.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating emptyDir: %w", err)
		}
		data := "mode=0777"
		if o.SizeLimit > 0 {
			data += ",size=" + strconv.FormatInt(o.SizeLimit, 10)
		}
		if err := unix.Mount("tmpfs", o.Dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, data); err != nil {
			return nil, fmt.Errorf("mounting tmpfs emptyDir at %s: %w", o.Dir, err)
		}
		log.G(ctx).WithFields(log.Fields{"dir": o.Dir, "size_limit": o.SizeLimit}).Info("cryptvol: memory emptyDir mounted")
		return &Volume{mountDir: o.Dir, tmpfs: true, ephemeral: true, removeDir: true}, nil
	case MediumDefault:
	default:
		return nil, fmt.Errorf("emptyDir medium %q not supported (want \"\" or %q)", o.Medium, MediumMemory)
	}
	if o.BackingDir == "" {
		return nil, errors.New("emptyDir on the default medium needs a backing directory")
	}
	if err := os.MkdirAll(o.BackingDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating backing directory: %w", err)
	}
	size := o.SizeLimit
	if size == 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(o.BackingDir, &st); err != nil {
			return nil, fmt.Errorf("statfs %s: %w", o.BackingDir, err)
		}
		size = int64(st.Bavail) * st.Bsize
	}
	if size < minEmptyDirSize {
		return nil, fmt.Errorf("emptyDir size %d below the minimum %d", size, minEmptyDirSize)
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("emptyDir path: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	v, err := CreateEphemeral(ctx, EphemeralOptions{
		Backing:  filepath.Join(o.BackingDir, "emptydir-"+hex.EncodeToString(sum[:8])+".img"),
		Size:     size,
		MountDir: o.Dir, Engine: o.Engine, RuntimeDir: o.RuntimeDir,
	})
	if err != nil {
		return nil, err
	}
	v.removeDir = true
	if err := os.Chmod(o.Dir, 0o777); err != nil {
		return nil, errors.Join(fmt.Errorf("making emptyDir writable: %w", err), v.Destroy(ctx))
	}
	return v, nil
}
