package fusefs

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// mountPassthrough mounts l and skips the test when this kernel gives no
// passthrough, saying why (the log line of Mount names the reason).
func mountPassthrough(t *testing.T, l *Layer) *Mounted {
	t.Helper()
	requireFUSE(t)
	m := mountWith(t, l, MountOptions{})
	if !m.Passthrough() {
		t.Skip("this kernel gives no FUSE passthrough here: " + passthroughWhy(t, m))
	}
	return m
}

func passthroughWhy(t *testing.T, m *Mounted) string {
	t.Helper()
	if err := detectPassthrough(m.server); err != nil {
		return err.Error()
	}
	return "turned off after the plain copies' probe"
}

// nodeOf returns the node serving name in m.
func nodeOf(t testing.TB, m *Mounted, name string) *node {
	t.Helper()
	e, ok := m.tree.layer.Lookup(name)
	if !ok {
		t.Fatalf("no entry %s", name)
	}
	m.tree.mu.Lock()
	in := m.tree.nodes[e]
	m.tree.mu.Unlock()
	if in == nil {
		t.Fatalf("no node for %s", name)
	}
	return in.Operations().(*node)
}

// waitReleased waits until the kernel's RELEASE of every caching open of
// name has reached the server (it is sent after close returns).
func waitReleased(t testing.TB, m *Mounted, name string) {
	t.Helper()
	n := nodeOf(t, m, name)
	for range 1000 {
		n.openMu.Lock()
		c := n.cachingOpens
		n.openMu.Unlock()
		if c == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: caching opens never released", name)
}

func readThrough(t testing.TB, m *Mounted, dir, name, want string) int64 {
	t.Helper()
	before := m.tree.reads.Load()
	got, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil || string(got) != want {
		t.Fatalf("%s: %d bytes (match %v), %v", name, len(got), string(got) == want, err)
	}
	return m.tree.reads.Load() - before
}

func TestPassthroughServesCompletedFiles(t *testing.T) {
	bl := buildLayer(t, testEntries(3<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(testChunkSize)})
	m := mountPassthrough(t, l)
	dir := m.Dir()

	// Before Complete: every read crosses FUSE.
	if n := readThrough(t, m, dir, "etc/motd", bl.files["etc/motd"]); n == 0 {
		t.Fatal("etc/motd before Complete: no read reached the read handler")
	}
	held, err := os.Open(filepath.Join(dir, "medium")) // a caching open, kept across Complete
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if err := l.Complete(context.Background(), CompleteOptions{Dir: cache, DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bin/big", "bin/hard"} {
		if n := readThrough(t, m, dir, name, bl.files["bin/big"]); n != 0 {
			t.Errorf("%s after Complete: %d read requests reached the server, want 0 (passthrough)", name, n)
		}
	}
	e, _ := l.Lookup("bin/big")
	plain := filepath.Join(cache, bl.digest.Encoded()+".files", digest.Digest(e.Digest).Encoded())
	if got, err := os.ReadFile(plain); err != nil || string(got) != bl.files["bin/big"] {
		t.Errorf("plain copy %s: %v", plain, err)
	}

	// medium is still open in caching mode: a new open must stay in that
	// mode (the kernel would fail a passthrough open with EIO).
	readThrough(t, m, dir, "medium", bl.files["medium"])
	held.Close()
	waitReleased(t, m, "medium")
	// A file read before Complete: its next open is passthrough too.
	for _, name := range []string{"medium", "etc/motd"} {
		waitReleased(t, m, name)
		if n := readThrough(t, m, dir, name, bl.files[name]); n != 0 {
			t.Errorf("%s, reopened after Complete: %d read requests, want 0", name, n)
		}
	}
	// And a passthrough open keeps working beside a second one.
	f1, err := os.Open(filepath.Join(dir, "bin/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	if n := readThrough(t, m, dir, "bin/big", bl.files["bin/big"]); n != 0 {
		t.Errorf("bin/big with another open: %d read requests, want 0", n)
	}
	// Empty files need no backing file.
	if n := readThrough(t, m, dir, "empty", ""); n != 0 {
		t.Errorf("empty: %d reads", n)
	}
}

func TestPassthroughNeverServesUnverifiedCopy(t *testing.T) {
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(testChunkSize)})
	// The whole-file digest of medium disagrees with its (verified)
	// chunks: its plain copy fails verification and is never used.
	em, _ := l.Lookup("medium")
	em.Digest = digest.FromString("not medium").String()
	m := mountPassthrough(t, l)
	dir := m.Dir()
	cache := t.TempDir()
	files := filepath.Join(cache, bl.digest.Encoded()+".files")
	// A copy of etc/motd left on disk (a previous run) that was altered:
	// hashed before use, found wrong, written again.
	emotd, _ := l.Lookup("etc/motd")
	if err := os.MkdirAll(files, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(files, digest.Digest(emotd.Digest).Encoded())
	if err := os.WriteFile(stale, []byte("tampered"+bl.files["etc/motd"][8:]), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(context.Background(), CompleteOptions{Dir: cache, DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	if n := readThrough(t, m, dir, "medium", bl.files["medium"]); n == 0 {
		t.Error("medium (copy fails verification): served without the read handler")
	}
	waitReleased(t, m, "medium")
	// Not tried again: the next open is a caching one too (its page cache
	// dropped, so the bytes come through the read handler again).
	f, err := os.Open(filepath.Join(dir, "medium"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nm := nodeOf(t, m, "medium")
	nm.openMu.Lock()
	c, p := nm.cachingOpens, nm.passthroughOpens
	nm.openMu.Unlock()
	if c != 1 || p != 0 {
		t.Errorf("medium reopened: %d caching, %d passthrough opens, want 1 and 0", c, p)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	before := m.tree.reads.Load()
	if got, err := io.ReadAll(f); err != nil || string(got) != bl.files["medium"] {
		t.Fatalf("medium: %v", err)
	}
	if m.tree.reads.Load() == before {
		t.Error("medium reopened: served without the read handler")
	}
	if _, err := os.Stat(filepath.Join(files, digest.Digest(em.Digest).Encoded())); !os.IsNotExist(err) {
		t.Errorf("unverified copy of medium kept: %v", err)
	}
	if n := readThrough(t, m, dir, "etc/motd", bl.files["etc/motd"]); n != 0 {
		t.Errorf("etc/motd: %d read requests, want 0 (rewritten copy by passthrough)", n)
	}
	if got, err := os.ReadFile(stale); err != nil || string(got) != bl.files["etc/motd"] {
		t.Errorf("stale copy not rewritten: %v", err)
	}
}

// TestPassthroughUnderOverlay reads passthrough files through an overlay
// whose lowerdir is the FUSE mount, as a container's rootfs does: the FUSE
// superblock's stacking depth (1) leaves room for overlayfs (kernel
// maximum 2).
func TestPassthroughUnderOverlay(t *testing.T) {
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(testChunkSize)})
	m := mountPassthrough(t, l)
	if err := l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	merged := mountOverlay(t, m.Dir())
	for _, name := range []string{"bin/big", "medium", "gone/kept"} {
		if n := readThrough(t, m, merged, name, bl.files[name]); n != 0 {
			t.Errorf("%s through overlay: %d read requests, want 0", name, n)
		}
	}
	if _, err := os.Stat(filepath.Join(merged, "removed")); !os.IsNotExist(err) {
		t.Errorf("whiteout not applied through overlay: %v", err)
	}
}

func TestPassthroughDisabled(t *testing.T) {
	requireFUSE(t)
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{})
	m := mountWith(t, l, MountOptions{DisablePassthrough: true})
	if m.Passthrough() {
		t.Fatal("Passthrough() with DisablePassthrough")
	}
	if err := l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	if n := readThrough(t, m, m.Dir(), "bin/big", bl.files["bin/big"]); n == 0 {
		t.Error("DisablePassthrough: no read reached the read handler")
	}
}

// mountOverlay mounts an overlay of lower at a new directory (with upper
// and work directories beside it) and unmounts it when the test ends.
func mountOverlay(t *testing.T, lower string) string {
	t.Helper()
	base := t.TempDir()
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay (lowerdir %s): %v", lower, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Error(err)
		}
	})
	return merged
}

// TestPassthroughOffWhenCopiesAreStacked puts the layer's cache directory
// on an overlay: its files are stacked one deep, as deep as the FUSE mount
// allows its backing files (max_stack_depth 1), so the kernel refuses them
// (ELOOP) and every read takes the read handler.
func TestPassthroughOffWhenCopiesAreStacked(t *testing.T) {
	bl := buildLayer(t, testEntries(1<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(testChunkSize)})
	m := mountPassthrough(t, l)
	cache := mountOverlay(t, t.TempDir())
	if err := l.Complete(context.Background(), CompleteOptions{Dir: cache, DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() }) // the local copy, before the overlay is unmounted
	f, err := os.CreateTemp(cache, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := probeBacking(m.server, int(f.Fd())); !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("backing file on overlay: %v, want ELOOP", err)
	}
	for _, name := range []string{"bin/big", "medium"} {
		if n := readThrough(t, m, m.Dir(), name, bl.files[name]); n == 0 {
			t.Errorf("%s: no read reached the read handler", name)
		}
	}
	if m.Passthrough() {
		t.Error("passthrough still on after the cache directory's probe failed")
	}
}

// TestPassthroughConcurrentFirstOpens: opens racing to the first copy of
// a file share one writer and all read by passthrough.
func TestPassthroughConcurrentFirstOpens(t *testing.T) {
	bl := buildLayer(t, testEntries(3<<20))
	l := mustOpen(t, memBlob(bl.blob), bl, Options{Cache: NewChunkCache(testChunkSize)})
	m := mountPassthrough(t, l)
	if err := l.Complete(context.Background(), CompleteOptions{Dir: t.TempDir(), DiffID: bl.diff}); err != nil {
		t.Fatal(err)
	}
	before := m.tree.reads.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		name := []string{"bin/big", "bin/hard"}[i%2]
		wg.Go(func() {
			got, err := os.ReadFile(filepath.Join(m.Dir(), name))
			if err == nil && string(got) != bl.files["bin/big"] {
				err = errors.New(name + ": wrong content")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := m.tree.reads.Load() - before; n != 0 {
		t.Errorf("%d read requests reached the server, want 0", n)
	}
}
