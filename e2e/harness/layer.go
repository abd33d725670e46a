package harness

import (
	"archive/tar"
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// layerTime is the modification time of every entry, so that a layer built
// twice has the same digest.
var layerTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Layer builds a layer tar entry by entry. Names are written exactly as
// given (no cleaning), so a Layer can also be deliberately malicious.
type Layer struct {
	entries []layerEntry
}

type layerEntry struct {
	hdr  tar.Header
	data []byte
	open func() io.Reader // for large files; reads exactly hdr.Size bytes
}

// NewLayer returns an empty layer.
func NewLayer() *Layer { return &Layer{} }

// Dir adds a directory (mode 0755).
func (l *Layer) Dir(name string) *Layer { return l.DirMode(name, 0o755) }

// DirMode adds a directory with a mode (e.g. 01777 for /tmp).
func (l *Layer) DirMode(name string, mode int64) *Layer {
	return l.Entry(tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}, nil)
}

// File adds a regular file.
func (l *Layer) File(name string, data []byte, mode int64) *Layer {
	return l.Entry(tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data)
}

// StreamFile adds a regular file of size bytes read from open() when the
// tar is written; for files too large to hold in memory.
func (l *Layer) StreamFile(name string, size int64, open func() io.Reader) *Layer {
	l.entries = append(l.entries, layerEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size}, open: open})
	return l
}

// Symlink adds a symbolic link name -> target.
func (l *Layer) Symlink(name, target string) *Layer {
	return l.Entry(tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
}

// Hardlink adds a hard link name -> target.
func (l *Layer) Hardlink(name, target string) *Layer {
	return l.Entry(tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}, nil)
}

// Entry adds a raw tar entry; Size is set from data for regular files.
func (l *Layer) Entry(hdr tar.Header, data []byte) *Layer {
	if hdr.Typeflag == tar.TypeReg {
		hdr.Size = int64(len(data))
	}
	l.entries = append(l.entries, layerEntry{hdr: hdr, data: data})
	return l
}

// WriteTo writes the uncompressed tar to w.
func (l *Layer) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	tw := tar.NewWriter(cw)
	for _, e := range l.entries {
		hdr := e.hdr
		hdr.Format = tar.FormatPAX
		if hdr.ModTime.IsZero() {
			hdr.ModTime = layerTime
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return cw.n, fmt.Errorf("tar header %q: %w", hdr.Name, err)
		}
		switch {
		case e.open != nil:
			n, err := io.CopyN(tw, e.open(), hdr.Size)
			if err != nil {
				return cw.n, fmt.Errorf("tar entry %q: wrote %d of %d bytes: %w", hdr.Name, n, hdr.Size, err)
			}
		case len(e.data) > 0:
			if _, err := tw.Write(e.data); err != nil {
				return cw.n, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
			}
		}
	}
	err := tw.Close()
	return cw.n, err
}

// Compression of a layer file.
type Compression int

const (
	// Uncompressed writes a plain tar (crane gzips it when pushing).
	Uncompressed Compression = iota
	// Gzip writes tar+gzip at the default level.
	Gzip
	// GzipStored writes tar+gzip without compression (deflate "stored"
	// blocks): the compressed size depends only on the tar size, which
	// makes same-size tampered blobs easy.
	GzipStored
	// Zstd writes tar+zstd.
	Zstd
)

// WriteFile writes the layer to path with the given compression.
func (l *Layer) WriteFile(path string, c Compression) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	var w io.WriteCloser
	switch c {
	case Uncompressed:
		w = nopCloser{bw}
	case Gzip:
		w = gzip.NewWriter(bw)
	case GzipStored:
		w, err = gzip.NewWriterLevel(bw, gzip.NoCompression)
	case Zstd:
		w, err = zstd.NewWriter(bw)
	default:
		return fmt.Errorf("unknown compression %d", c)
	}
	if err != nil {
		return err
	}
	if _, err := l.WriteTo(w); err != nil {
		return fmt.Errorf("writing layer %s: %w", path, err)
	}
	if err := w.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// Bytes returns the layer with compression c.
func (l *Layer) Bytes(dir string, c Compression) ([]byte, error) {
	f, err := os.CreateTemp(dir, "layer-*")
	if err != nil {
		return nil, err
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	if err := l.WriteFile(name, c); err != nil {
		return nil, err
	}
	return os.ReadFile(name)
}

// busyboxApplets are linked into /bin of the busybox layer.
var busyboxApplets = []string{
	"sh", "cat", "echo", "sleep", "ls", "test", "true", "false", "wc", "head",
	"sha256sum", "stat", "find", "env", "id", "mkdir", "touch", "grep", "rm",
}

// BusyboxLayer returns a static busybox root filesystem layer: /bin/busybox
// from Debian's busybox-static, applet symlinks, and the usual top-level
// directories including a world-writable /tmp.
func BusyboxLayer() (*Layer, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("reading /bin/busybox (install busybox-static: make e2e-tools): %w", err)
	}
	l := NewLayer()
	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "sys", "var"} {
		l.Dir(d + "/")
	}
	l.DirMode("tmp/", 0o1777)
	l.File("bin/busybox", bb, 0o755)
	for _, a := range busyboxApplets {
		l.Symlink("bin/"+a, "busybox")
	}
	l.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	l.File("etc/group", []byte("root:x:0:\n"), 0o644)
	return l, nil
}

// RandomReader returns an endless deterministic stream of incompressible
// bytes.
func RandomReader(seed uint64) io.Reader {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
