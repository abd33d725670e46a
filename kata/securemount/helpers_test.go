package securemount

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// requireRoot fails (CI runs as root; these tests must not skip) unless
// loop devices, FUSE, mkfs.ext4 and cryptsetup are at hand.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: loop devices, FUSE and mount")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("needs %s: %v", p, err)
		}
	}
	for _, b := range []string{"mkfs.ext4", "cryptsetup"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("needs %s (scripts/cryptvol-deps.sh): %v", b, err)
		}
	}
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testCtx(t testing.TB) context.Context {
	l := logrus.New()
	l.Out = tbWriter{t}
	l.Level = logrus.DebugLevel
	return log.WithLogger(context.Background(), logrus.NewEntry(l))
}

// newLoop attaches a sparse file of size bytes to a loop device: the
// "block device" the kata-agent would name. It returns the device and its
// backing file.
func newLoop(t *testing.T, size int64) (dev, backing string) {
	t.Helper()
	backing = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	d, err := loop.Attach(context.Background(), backing, loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Detach(context.Background(), 10*time.Second); err != nil {
			t.Errorf("detaching %s: %v", d.Path(), err)
		}
	})
	return d.Path(), backing
}

// deviceID is MAJ:MIN of a block device.
func deviceID(t *testing.T, dev string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
}

var fastKDF = luks2.KDFParams{Type: "pbkdf2", Iterations: luks2.MinPBKDF2Iterations}

// newMounter returns a Mounter on the userspace engine with a private
// runtime dir, closed at the end of the test, which then checks that
// nothing of it is left.
func newMounter(t *testing.T, o Options) (*Mounter, string) {
	t.Helper()
	rt := filepath.Join(t.TempDir(), "run")
	o.Engine, o.RuntimeDir, o.KDF = cryptvol.EngineUserspace, rt, fastKDF
	m := New(o)
	t.Cleanup(func() {
		if err := m.Close(testCtx(t)); err != nil {
			t.Errorf("closing the mounter: %v", err)
		}
		assertNoEngine(t, rt)
	})
	return m, rt
}

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	m, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(m) > 0
}

// mountSource is the source of the mount at dir.
func mountSource(t *testing.T, dir string) string {
	t.Helper()
	m, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(m) != 1 {
		t.Fatalf("mount at %s: %v (%d entries)", dir, err, len(m))
	}
	return m[0].Source
}

// assertNoEngine checks that the userspace engine left no FUSE mount,
// loop device or directory in its runtime dir.
func assertNoEngine(t *testing.T, rt string) {
	t.Helper()
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil && strings.HasPrefix(string(b), rt) {
			t.Errorf("loop device still attached to the engine: %s", m)
		}
	}
	if entries, _ := os.ReadDir(rt); len(entries) > 0 {
		t.Errorf("engine runtime dir not empty: %v", entries)
	}
}

// assertNothingAt checks that the mount point holds neither a mount nor a
// symlink of ours.
func assertNothingAt(t *testing.T, point string) {
	t.Helper()
	if isMounted(t, point) {
		t.Errorf("%s is still mounted", point)
	}
	if fi, err := os.Lstat(point); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		t.Errorf("%s is still a symlink", point)
	}
}

func cryptsetup(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("cryptsetup", args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// marker is plaintext that must never reach a backing file.
var marker = []byte("COCOON-SECUREMOUNT-PLAINTEXT-5e1d")

func markedData(size int) []byte {
	b := make([]byte, size)
	rand.Read(b)
	for off := 0; off+len(marker) <= size; off += 4096 {
		copy(b[off:], marker)
	}
	return b
}

// fileContains scans a file for marker.
func fileContains(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, marker)
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
