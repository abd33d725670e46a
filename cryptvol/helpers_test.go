package cryptvol

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"github.com/sirupsen/logrus"
)

// requireRoot skips tests that need root, FUSE, loop devices and mkfs.ext4.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE, loop devices, mount)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (scripts/cryptvol-deps.sh)")
	}
}

func requireCryptsetup(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skip("needs cryptsetup (scripts/cryptvol-deps.sh)")
	}
}

// tbWriter sends log lines to t.Log: shown with -v or on failure only.
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

// isMounted reports whether dir is a mount point in this namespace.
func isMounted(t testing.TB, dir string) bool {
	t.Helper()
	abs, _ := filepath.Abs(dir)
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(abs))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts) > 0
}

// loopsBackedBy lists loop devices whose backing file is under prefix.
func loopsBackedBy(t testing.TB, prefix string) []string {
	t.Helper()
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), prefix) {
			out = append(out, m)
		}
	}
	return out
}

// volumeCleanup makes sure a test leaves nothing behind even on failure.
func volumeCleanup(t testing.TB, v **Volume) {
	t.Cleanup(func() {
		if *v != nil {
			if err := (*v).Close(testCtx(t)); err != nil {
				t.Errorf("cleanup close: %v", err)
			}
		}
	})
}

// assertNothingLeft checks that no mount and no loop device remain.
func assertNothingLeft(t testing.TB, mountDir, runtimeDir string) {
	t.Helper()
	if isMounted(t, mountDir) {
		t.Errorf("%s is still mounted", mountDir)
	}
	if l := loopsBackedBy(t, runtimeDir); len(l) > 0 {
		t.Errorf("loop devices still attached to the engine: %v", l)
	}
	entries, _ := os.ReadDir(runtimeDir)
	if len(entries) > 0 {
		t.Errorf("engine runtime dir not empty: %v", entries)
	}
}

// fileContains scans a file for marker.
func fileContains(t testing.TB, path string, marker []byte) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	var carry []byte
	for {
		n, err := f.Read(buf)
		if n > 0 {
			chunk := append(carry, buf[:n]...)
			if bytes.Contains(chunk, marker) {
				return true
			}
			carry = append([]byte(nil), chunk[max(0, len(chunk)-len(marker)):]...)
		}
		if err != nil {
			return false
		}
	}
}
