package detached

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cocoon-cc/cocoon/cryptvol/loop"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// TestMain lets the test binary be the engine process Start re-executes.
func TestMain(m *testing.M) {
	RunEngineIfRequested()
	os.Exit(m.Run())
}

func requireVolumeRoot(t *testing.T) {
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

type volEnv struct {
	dir, state, runtime, mount string
}

func newVolEnv(t *testing.T) *volEnv {
	dir := t.TempDir()
	e := &volEnv{dir: dir, state: filepath.Join(dir, "state"), runtime: filepath.Join(dir, "run"), mount: filepath.Join(dir, "mnt")}
	// Whatever happens, stop engine processes and unmount.
	t.Cleanup(func() {
		if st, err := e.readState(); err == nil && ProcessAlive(st.PID, st.StartTime) {
			Stop(context.Background(), e.state, e.mount, false, time.Minute)
		}
		if st, err := e.readState(); err == nil && ProcessAlive(st.PID, st.StartTime) {
			p, _ := os.FindProcess(st.PID)
			p.Kill()
		}
	})
	return e
}

func (e *volEnv) readState() (*State, error) {
	_, p, _, err := StatePaths(e.state, e.mount)
	if err != nil {
		return nil, err
	}
	return ReadState(p)
}

func (e *volEnv) request(op string) Request {
	return Request{Op: op, MountDir: e.mount, Engine: "userspace", RuntimeDir: e.runtime, StateDir: e.state}
}

func mounted(t *testing.T, dir string) bool {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(mounts) > 0
}

// assertReleased checks the engine process is gone and no mount, loop
// device, FUSE mount or state file is left.
func (e *volEnv) assertReleased(t *testing.T, st *State) {
	t.Helper()
	if ProcessAlive(st.PID, st.StartTime) {
		t.Errorf("engine process %d still running", st.PID)
	}
	if mounted(t, e.mount) {
		t.Errorf("%s still mounted", e.mount)
	}
	if st.BlockDevice != "" {
		if bf, ok := loop.BackingFile(st.BlockDevice); ok && strings.HasPrefix(bf, e.runtime) {
			t.Errorf("loop device %s still attached to %s", st.BlockDevice, bf)
		}
	}
	if entries, _ := os.ReadDir(e.runtime); len(entries) != 0 {
		t.Errorf("engine FUSE mounts left: %v", entries)
	}
	if _, err := e.readState(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}

// TestCrashCleanup kills the engine process and checks Stop still
// releases the mount and the loop device.
func TestCrashCleanup(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	backing := filepath.Join(e.dir, "scratch.img")
	req := e.request(OpCreate)
	req.Backing, req.Size = backing, 32<<20
	if _, err := Start(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	st, err := e.readState()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := os.FindProcess(st.PID)
	p.Kill()
	for deadline := time.Now().Add(10 * time.Second); ProcessAlive(st.PID, st.StartTime); {
		if time.Now().After(deadline) {
			t.Fatal("engine process survived SIGKILL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := Stop(ctx, e.state, e.mount, true, time.Minute); err != nil {
		t.Fatal(err)
	}
	e.assertReleased(t, st)
	if _, err := os.Stat(backing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("backing file left: %v", err)
	}
}

// slowHeader writes a LUKS2 header whose keyslot takes cryptsetup's maximum
// PBKDF2 cost (an hour or more) to derive.
func slowHeader(t *testing.T, path string) {
	t.Helper()
	key := make([]byte, 64)
	rand.Read(key)
	im, err := luks2.Create(key, luks2.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.AddKeyslot(key, []byte("pass"), luks2.KDFParams{Iterations: luks2.MinPBKDF2Iterations}); err != nil {
		t.Fatal(err)
	}
	im.Header.Metadata.Keyslots["0"].KDF.Iterations = luks2.MaxIterations
	img, err := im.Encode()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, img, 0o600)
}

// TestStartCancelled: cancelling Start (cocoond's or cocoonctl's SIGTERM
// cancels its context) while the engine process derives a keyslot key at
// the maximum PBKDF2 cost stops the derivation: Start returns the
// cancellation, and the engine process exits.
func TestStartCancelled(t *testing.T) {
	e := newVolEnv(t)
	req := e.request(OpOpen)
	req.Header, req.Device = filepath.Join(e.dir, "hdr"), filepath.Join(e.dir, "data.img")
	slowHeader(t, req.Header)
	os.WriteFile(req.Device, nil, 0o600)
	os.Truncate(req.Device, 32<<20)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Start(ctx, req, []byte("pass"))
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the engine start deriving (either way the result is the same)
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("err %v, want the open cancelled", err)
		}
	case <-time.After(2 * time.Minute):
		killChildren(t)
		t.Fatal("Start did not return after cancellation")
	}
	if _, err := e.readState(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file after a cancelled open: %v", err)
	}
}

// killChildren kills the processes this test process started (by PID).
func killChildren(t *testing.T) {
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
	}
}
