package secretsfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Credential is one cdh.toml [[credentials]] entry: a KBS resource fetched
// at start and written to Path.
type Credential struct {
	ResourceURI string `toml:"resource_uri"`
	Path        string `toml:"path"`
}

// ErrNotMemoryBacked: a credential target is not on tmpfs or ramfs.
var ErrNotMemoryBacked = errors.New("target directory is not on tmpfs or ramfs")

// ProvisionCredentials fetches each credential and writes it, mode 0400,
// atomically (temporary file and rename in the same directory) to its
// Path. A Path must be absolute and clean, without "." or ".." elements,
// and its directory must be on tmpfs or ramfs, checked on the directory
// the file is then created in, so plaintext never reaches a disk.
// Missing parent directories are created (0700) only below a memory-backed
// ancestor. It stops at the first failure, naming the credential.
func ProvisionCredentials(ctx context.Context, getter kbs.ResourceGetter, creds []Credential) error {
	for _, c := range creds {
		if err := provision(ctx, getter, c); err != nil {
			return fmt.Errorf("credential %s -> %s: %w", c.ResourceURI, c.Path, err)
		}
		log.G(ctx).WithFields(log.Fields{"resource": c.ResourceURI, "path": c.Path}).Info("secretsfs: credential provisioned")
	}
	return nil
}

func checkPath(p string) error {
	if !filepath.IsAbs(p) {
		return errors.New("path must be absolute")
	}
	for _, el := range strings.Split(p[1:], "/") {
		if el == "" || el == "." || el == ".." {
			return errors.New(`path must be clean, without empty, "." or ".." elements`)
		}
	}
	return nil
}

func memoryBacked(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	switch uint32(st.Type) {
	case unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
		return nil
	}
	return fmt.Errorf("%w (filesystem magic %#x)", ErrNotMemoryBacked, st.Type)
}

// openDir opens dir, creating missing elements below the nearest existing
// ancestor, which must be memory-backed.
func openDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.ENOENT) || dir == "/" {
		return -1, fmt.Errorf("open %s: %w", dir, err)
	}
	pfd, err := openDir(filepath.Dir(dir))
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := memoryBacked(pfd); err != nil {
		return -1, fmt.Errorf("create %s: %w", dir, err)
	}
	name := filepath.Base(dir)
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("create %s: %w", dir, err)
	}
	fd, err = unix.Openat(pfd, name, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", dir, err)
	}
	return fd, nil
}

func provision(ctx context.Context, getter kbs.ResourceGetter, c Credential) error {
	if getter == nil {
		return errors.New("no KBS configured")
	}
	if _, err := kbs.ParseResourceURI(c.ResourceURI); err != nil {
		return err
	}
	if err := checkPath(c.Path); err != nil {
		return err
	}
	dfd, err := openDir(filepath.Dir(c.Path))
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	// Checked on the open directory itself, so a symlink or a mount swapped
	// in after the check cannot redirect the write.
	if err := memoryBacked(dfd); err != nil {
		return err
	}
	data, err := getter.GetResource(ctx, c.ResourceURI)
	if err != nil {
		return err
	}
	defer clear(data)
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	base := filepath.Base(c.Path)
	tmp := "." + base + ".tmp-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	werr := writeAll(fd, data)
	if cerr := unix.Close(fd); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = unix.Renameat(dfd, tmp, dfd, base)
	}
	if werr != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("write: %w", werr)
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		b = b[n:]
	}
	return nil
}
