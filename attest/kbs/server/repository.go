package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
)

// repository is Trustee's local-fs resource layout, DIR/<repo>/<type>/<tag>,
// read at request time. os.Root keeps every access inside DIR, symlinks
// included; names are also checked against Trustee's segment pattern.
type repository struct {
	root *os.Root
}

func openRepository(dir string) (*repository, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create repository %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", dir, err)
	}
	return &repository{root: root}, nil
}

const maxResourceSize = 64 << 20

func (r *repository) read(p [3]string) ([]byte, error) {
	name := path.Join(p[0], p[1], p[2])
	fi, err := r.root.Stat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("resource %s not found", name)
		}
		return nil, fmt.Errorf("stat resource %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxResourceSize {
		return nil, fmt.Errorf("resource %s is not a regular file of at most %d bytes", name, maxResourceSize)
	}
	b, err := r.root.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read resource %s: %w", name, err)
	}
	return b, nil
}

// write replaces the resource atomically: temp file in the same directory,
// fsync, rename.
func (r *repository) write(p [3]string, data []byte) error {
	dir := path.Join(p[0], p[1])
	if err := r.root.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := path.Join(dir, ".tmp-"+p[2]+"-"+hex.EncodeToString(rnd[:]))
	f, err := r.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create temporary resource file: %w", err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = r.root.Rename(tmp, path.Join(dir, p[2]))
	}
	if werr != nil {
		_ = r.root.Remove(tmp)
		return fmt.Errorf("write resource %s: %w", path.Join(dir, p[2]), werr)
	}
	return nil
}

func (r *repository) delete(p [3]string) error {
	name := path.Join(p[0], p[1], p[2])
	if err := r.root.Remove(name); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("resource %s not found", name)
		}
		return fmt.Errorf("delete resource %s: %w", name, err)
	}
	return nil
}

func (r *repository) close() error { return r.root.Close() }
