// Package detachedtest is the test harness for detached engine processes:
// a temporary state, runtime and mount directory per test, cleanup of any
// engine process a test leaves, and the check that a released volume left
// nothing behind. A test binary that starts engines must call
// detached.RunEngineIfRequested from TestMain.
package detachedtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
)

// RequireRoot skips a test that needs root, FUSE, loop devices and
// mkfs.ext4.
func RequireRoot(t *testing.T) {
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

// Env is one test's directories: Dir for the test's own files, State for
// state files, Runtime for the userspace engine's FUSE mounts, Mount for
// the volume.
type Env struct {
	Dir, State, Runtime, Mount string
}

// NewEnv makes the directories and, whatever happens, stops the engine
// process serving Mount when the test ends (killing it if it will not).
func NewEnv(t *testing.T) *Env {
	dir := t.TempDir()
	e := &Env{Dir: dir, State: filepath.Join(dir, "state"), Runtime: filepath.Join(dir, "run"), Mount: filepath.Join(dir, "mnt")}
	t.Cleanup(func() {
		if st, err := e.ReadState(); err == nil && detached.ProcessAlive(st.PID, st.StartTime) {
			if err := detached.Stop(context.Background(), e.State, e.Mount, false, time.Minute); err != nil {
				t.Errorf("stopping the engine of %s: %v", e.Mount, err)
			}
		}
		if st, err := e.ReadState(); err == nil && detached.ProcessAlive(st.PID, st.StartTime) {
			p, _ := os.FindProcess(st.PID)
			if err := p.Kill(); err != nil {
				t.Errorf("killing engine process %d: %v", st.PID, err)
			}
		}
	})
	return e
}

// ReadState reads the state file of the volume at Mount.
func (e *Env) ReadState() (*detached.State, error) {
	_, p, _, err := detached.StatePaths(e.State, e.Mount)
	if err != nil {
		return nil, err
	}
	return detached.ReadState(p)
}

// Mounted reports whether dir is a mount point.
func Mounted(t *testing.T, dir string) bool {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts) > 0
}

// AssertReleased checks the engine process is gone and no mount, loop
// device, FUSE mount or state file is left.
func (e *Env) AssertReleased(t *testing.T, st *detached.State) {
	t.Helper()
	if detached.ProcessAlive(st.PID, st.StartTime) {
		t.Errorf("engine process %d still running", st.PID)
	}
	if Mounted(t, e.Mount) {
		t.Errorf("%s still mounted", e.Mount)
	}
	if st.BlockDevice != "" {
		if bf, ok := loop.BackingFile(st.BlockDevice); ok && strings.HasPrefix(bf, e.Runtime) {
			t.Errorf("loop device %s still attached to %s", st.BlockDevice, bf)
		}
	}
	if entries, _ := os.ReadDir(e.Runtime); len(entries) != 0 {
		t.Errorf("engine FUSE mounts left: %v", entries)
	}
	if _, err := e.ReadState(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}
