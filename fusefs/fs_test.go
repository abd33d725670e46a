package fusefs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// mountLayer mounts l on a new directory and unmounts it when the test ends.
func mountLayer(t testing.TB, l *Layer) string {
	t.Helper()
	return mountWith(t, l, MountOptions{}).Dir()
}

// mountWith mounts l with opts on a new directory and unmounts it when the
// test ends.
func mountWith(t testing.TB, l *Layer, opts MountOptions) *Mounted {
	t.Helper()
	m, err := Mount(context.Background(), t.TempDir(), l, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return m
}

func TestMountPresentsTheTOCTree(t *testing.T) {
	requireFUSE(t)
	bl := buildLayer(t, testEntries(300<<10))
	dir := mountLayer(t, mustOpen(t, memBlob(bl.blob), bl, Options{}))
	p := func(n string) string { return filepath.Join(dir, n) }

	stat := func(n string) *syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(p(n), &st); err != nil {
			t.Fatalf("lstat %s: %v", n, err)
		}
		return &st
	}
	for _, tc := range []struct {
		name       string
		mode       uint32
		uid, gid   uint32
		size       int64
		nlink      uint64
		checkNlink bool
	}{
		{"etc/hostname", syscall.S_IFREG | 0o640, 7, 8, 7, 1, true},
		{"bin", syscall.S_IFDIR | 0o711, 0, 0, 4096, 0, false},
		{"bin/big", syscall.S_IFREG | 0o755, 0, 0, 300 << 10, 2, true},
		{"bin/link", syscall.S_IFLNK | 0o644, 0, 0, 3, 1, false},
		{"dev/null", syscall.S_IFCHR | 0o666, 0, 0, 0, 1, true},
		{"empty", syscall.S_IFREG | 0o644, 0, 0, 0, 1, true},
	} {
		st := stat(tc.name)
		if st.Mode != tc.mode || st.Uid != tc.uid || st.Gid != tc.gid || st.Size != tc.size {
			t.Errorf("%s: mode %o uid %d gid %d size %d, want %o %d %d %d", tc.name, st.Mode, st.Uid, st.Gid, st.Size, tc.mode, tc.uid, tc.gid, tc.size)
		}
		if tc.checkNlink && st.Nlink != tc.nlink {
			t.Errorf("%s: nlink %d, want %d", tc.name, st.Nlink, tc.nlink)
		}
		if st.Mtim.Sec != testMtime.Unix() {
			t.Errorf("%s: mtime %d, want %d", tc.name, st.Mtim.Sec, testMtime.Unix())
		}
	}
	if st := stat("dev/null"); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null rdev %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if a, b := stat("bin/big"), stat("bin/hard"); a.Ino != b.Ino {
		t.Errorf("hardlink inode %d, target %d", b.Ino, a.Ino)
	}
	if target, err := os.Readlink(p("bin/link")); err != nil || target != "big" {
		t.Errorf("readlink: %q %v", target, err)
	}
	// Whiteout: .wh.removed is a 0/0 character device "removed".
	if st := stat("removed"); st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout: mode %o rdev %d", st.Mode, st.Rdev)
	}
	names := func(d string) []string {
		ents, err := os.ReadDir(p(d))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	if got := names("."); !slices.Equal(got, []string{"bin", "dev", "empty", "etc", "gone", "medium", "removed"}) {
		t.Errorf("root lists %v", got)
	}
	if got := names("gone"); !slices.Equal(got, []string{"kept"}) {
		t.Errorf("opaque dir lists %v", got)
	}
	xattr := func(n, k string) string {
		buf := make([]byte, 64)
		sz, err := unix.Lgetxattr(p(n), k, buf)
		if err != nil {
			return "error: " + err.Error()
		}
		return string(buf[:sz])
	}
	if got := xattr("gone", "trusted.overlay.opaque"); got != "y" {
		t.Errorf("opaque xattr: %q", got)
	}
	if got := xattr("etc", "trusted.overlay.opaque"); !strings.HasPrefix(got, "error") {
		t.Errorf("non-opaque dir has the opaque xattr: %q", got)
	}
	if got := xattr("etc/motd", "user.note"); got != "hello" {
		t.Errorf("user xattr: %q", got)
	}
	lbuf := make([]byte, 256)
	n, err := unix.Llistxattr(p("etc/motd"), lbuf)
	if err != nil || string(lbuf[:n]) != "user.note\x00" {
		t.Errorf("listxattr: %q %v", lbuf[:n], err)
	}
	for name, want := range map[string]string{"etc/motd": bl.files["etc/motd"], "bin/big": bl.files["bin/big"], "bin/hard": bl.files["bin/big"], "gone/kept": "still here", "empty": ""} {
		got, err := os.ReadFile(p(name))
		if err != nil || string(got) != want {
			t.Errorf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
	if err := os.WriteFile(p("etc/new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write: %v, want EROFS", err)
	}
	if _, err := os.OpenFile(p("etc/motd"), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open for writing: %v, want EROFS", err)
	}
}

func TestMountSmallReadFetchesLittle(t *testing.T) {
	requireFUSE(t)
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(8<<20))
	blob := reg.push(t, bl)
	l := mustOpen(t, blob, bl, Options{})
	dir := mountLayer(t, l)
	got, err := os.ReadFile(filepath.Join(dir, "etc/hostname"))
	if err != nil || string(got) != "cocoon\n" {
		t.Fatalf("read: %q %v", got, err)
	}
	frac := float64(reg.Served.Load()) / float64(len(bl.blob))
	t.Logf("opening the layer and reading etc/hostname fetched %d of %d blob bytes (%.3f%%) in %d requests",
		reg.Served.Load(), len(bl.blob), 100*frac, reg.Requests.Load())
	if frac > 0.02 {
		t.Errorf("fetched %.1f%% of the blob to read a 7-byte file", 100*frac)
	}
}

// logCapture is a logger whose lines the test can read.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func TestMountTamperedChunkGivesEIO(t *testing.T) {
	requireFUSE(t)
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	blob := reg.push(t, bl)
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var logs logCapture
	logger := logrus.New()
	logger.SetOutput(&logs)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))
	l, err := Open(ctx, blob, Options{Digest: bl.digest, TOCDigest: bl.tocDigest, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := mountLayer(t, l)
	ce, _ := l.r.ChunkEntryForOffset("bin/big", 9*testChunkSize)
	reg.TamperAt.Store(ce.Offset + 100)

	_, err = os.ReadFile(filepath.Join(dir, "bin/big"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading the tampered file: %v, want EIO", err)
	}
	for _, name := range []string{"etc/hostname", "etc/motd", "medium"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != bl.files[name] {
			t.Errorf("other file %s: %v", name, err)
		}
	}
	// The chunks before the bad one still read.
	f, err := os.Open(filepath.Join(dir, "bin/hard"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4*testChunkSize)
	if _, err := io.ReadFull(f, head); err != nil || string(head) != bl.files["bin/big"][:len(head)] {
		t.Errorf("good chunks of the tampered file: %v", err)
	}
	f.Close()
	if got := testutil.ToFloat64(m.verifyFailures); got < 1 {
		t.Errorf("verify failures = %v, want at least 1", got)
	}
	line := ""
	for _, ln := range strings.Split(logs.String(), "\n") {
		if strings.Contains(ln, "chunk verification failed") {
			line = ln
			break
		}
	}
	for _, want := range []string{bl.digest.String(), "file=bin/big", "offset=589824"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

func TestMountRequiresExistingDir(t *testing.T) {
	requireFUSE(t)
	bl := buildLayer(t, testEntries(1024))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{})
	dir := filepath.Join(t.TempDir(), "absent")
	if m, err := Mount(context.Background(), dir, l, MountOptions{}); err == nil {
		_ = m.Unmount()
		t.Fatal("mounted on a missing directory")
	}
	if mounted(t, dir) {
		t.Fatal("a mount exists")
	}
}

// BenchmarkCachedSequentialRead reads a 32 MiB file whose chunks are all
// in the chunk cache through the mount and compares the throughput with
// reading the same bytes from a tmpfs file, measured in the same run
// (ratio-vs-tmpfs). "fuse" drops the kernel's page cache for the file
// before each pass, so every read crosses FUSE into the chunk cache;
// "pagecache" keeps it (FOPEN_KEEP_CACHE), as repeated reads by a
// container do. "passthrough" completes the layer (local copy and plain
// copies on /dev/shm) and reads the file by FUSE passthrough, where the
// kernel allows it.
//
//	go test -run '^$' -bench CachedSequentialRead ./fusefs/
func BenchmarkCachedSequentialRead(b *testing.B) {
	requireFUSE(b)
	const size = 32 << 20
	ents := []entry{{name: "data", body: randomText(9, size)}}
	bl := buildLayer(b, ents, estargz.WithChunkSize(4<<20)) // estargz's default chunk size
	l := mustOpen(b, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(2 * size)})
	m := mountWith(b, l, MountOptions{})
	dir := m.Dir()
	plainDir, err := os.MkdirTemp("/dev/shm", "fusefs-bench-")
	if err != nil {
		b.Skip("no /dev/shm")
	}
	b.Cleanup(func() { os.RemoveAll(plainDir) })
	plain := filepath.Join(plainDir, "data")
	if err := os.WriteFile(plain, []byte(ents[0].body), 0o600); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	readFile := func(b *testing.B, path string, dropCache bool) {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if dropCache {
			_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		if err != nil || n != size {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
	readFile(b, filepath.Join(dir, "data"), true) // fill the chunk cache
	plainTime := func(b *testing.B) time.Duration {
		start := time.Now()
		for range 4 {
			readFile(b, plain, false)
		}
		return time.Since(start) / 4
	}
	for _, mode := range []struct {
		name        string
		drop        bool
		passthrough bool
	}{{"fuse", true, false}, {"pagecache", false, false}, {"passthrough", false, true}} {
		b.Run(mode.name, func(b *testing.B) {
			if mode.passthrough {
				if !m.Passthrough() {
					b.Skip("no FUSE passthrough on this kernel")
				}
				if err := l.Complete(context.Background(), CompleteOptions{Dir: plainDir, DiffID: bl.diff}); err != nil {
					b.Fatal(err)
				}
				waitReleased(b, m, "data")
				before := m.tree.reads.Load()
				readFile(b, filepath.Join(dir, "data"), false)
				if n := m.tree.reads.Load() - before; n != 0 {
					b.Fatalf("passthrough: %d read requests reached the server", n)
				}
			}
			base := plainTime(b)
			b.SetBytes(size)
			b.ResetTimer()
			for b.Loop() {
				readFile(b, filepath.Join(dir, "data"), mode.drop)
			}
			b.StopTimer()
			perOp := b.Elapsed() / time.Duration(b.N)
			base = (base + plainTime(b)) / 2
			b.ReportMetric(float64(size)/base.Seconds()/1e6, "tmpfs-MB/s")
			b.ReportMetric(base.Seconds()/perOp.Seconds(), "ratio-vs-tmpfs")
		})
	}
}

func TestMountHardlinkToDirectoryIsNoLoop(t *testing.T) {
	requireFUSE(t)
	payload := []byte("0123456789abcdef")
	toc := []byte(`{"version":1,"entries":[` +
		`{"name":"d/","type":"dir","mode":493},` +
		`{"name":"d/f","type":"reg","size":16,"offset":0,"chunkDigest":"` + digestOf(payload) + `"},` +
		`{"name":"d/loop","type":"hardlink","linkName":"d/"},` +
		`{"name":"up","type":"hardlink","linkName":""}]}`)
	blob, td := hostileBlob(t, payload, toc, func(o int64) int64 { return o })
	l, err := Open(context.Background(), memBlob(blob), Options{Digest: digestOfBytes(blob), TOCDigest: td})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := mountLayer(t, l)
	got, err := os.ReadFile(filepath.Join(dir, "d/f"))
	if err != nil || string(got) != string(payload) {
		t.Fatalf("d/f: %q %v", got, err)
	}
	for _, n := range []string{"d/loop", "up"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want absent", n, err)
		}
	}
}

func TestMountReadsLocallyAfterComplete(t *testing.T) {
	requireFUSE(t)
	reg := startRegistry(t)
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, reg.push(t, bl), bl, Options{Cache: NewChunkCache(testChunkSize)})
	dir := mountLayer(t, l)
	if err := l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	for _, name := range []string{"bin/big", "etc/motd", "medium"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != bl.files[name] {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if got := reg.Requests.Load(); got != 0 {
		t.Errorf("registry requests through the mount after Complete = %d, want 0", got)
	}
}
