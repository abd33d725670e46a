package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// repository reads Trustee's resource layouts under DIR, at request time:
// the nested one, DIR/<repo>/<type>/<tag>, and the flat one Trustee's
// current key-value local_fs backend writes, one file per resource named
// <repo>\x2F<type>\x2F<tag> (each "/" of the key spelled as the four
// characters \x2F) directly under DIR. os.Root keeps every access inside
// DIR, symlinks included; names are also checked against Trustee's segment
// pattern, which admits neither "/" nor "\" nor a leading ".", so a flat
// name is always one path component. cocoon-kbs writes the nested layout.
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

// flatKeySeparator is how Trustee's local_fs spells "/" in a file name.
const flatKeySeparator = `\x2F`

func nestedName(p [3]string) string { return path.Join(p[0], p[1], p[2]) }

func flatName(p [3]string) string { return strings.Join(p[:], flatKeySeparator) }

// notFound reports whether err means the name does not exist, including a
// path component that is a file rather than a directory.
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func (r *repository) read(p [3]string) ([]byte, error) {
	display := nestedName(p)
	var fi fs.FileInfo
	var name string
	var err error
	for _, name = range []string{nestedName(p), flatName(p)} {
		if fi, err = r.root.Stat(name); !notFound(err) {
			break
		}
	}
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("resource %s not found", display)
		}
		return nil, fmt.Errorf("stat resource %s: %w", display, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxResourceSize {
		return nil, fmt.Errorf("resource %s is not a regular file of at most %d bytes", display, maxResourceSize)
	}
	b, err := r.root.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read resource %s: %w", display, err)
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

// delete removes the resource in either layout (both, when both exist).
func (r *repository) delete(p [3]string) error {
	removed := false
	for _, name := range []string{nestedName(p), flatName(p)} {
		err := r.root.Remove(name)
		if err == nil {
			removed = true
			continue
		}
		if !notFound(err) {
			return fmt.Errorf("delete resource %s: %w", nestedName(p), err)
		}
	}
	if !removed {
		return fmt.Errorf("resource %s not found", nestedName(p))
	}
	return nil
}

func (r *repository) close() error { return r.root.Close() }
