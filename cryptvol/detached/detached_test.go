package detached_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/cryptvol/detached/detachedtest"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// TestMain lets the test binary be the engine process Start re-executes.
func TestMain(m *testing.M) {
	detached.RunEngineIfRequested()
	os.Exit(m.Run())
}

// request asks for a volume on e's directories, served by the userspace
// engine.
func request(e *detachedtest.Env, op string) detached.Request {
	return detached.Request{Op: op, MountDir: e.Mount, Engine: "userspace", RuntimeDir: e.Runtime, StateDir: e.State}
}

// TestCrashCleanup kills the engine process and checks Stop still
// releases the mount and the loop device.
func TestCrashCleanup(t *testing.T) {
	detachedtest.RequireRoot(t)
	ctx := context.Background()
	e := detachedtest.NewEnv(t)
	backing := filepath.Join(e.Dir, "scratch.img")
	req := request(e, detached.OpCreate)
	req.Backing, req.Size = backing, 32<<20
	if _, err := detached.Start(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	st, err := e.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := os.FindProcess(st.PID)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); detached.ProcessAlive(st.PID, st.StartTime); {
		if time.Now().After(deadline) {
			t.Fatal("engine process survived SIGKILL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := detached.Stop(ctx, e.State, e.Mount, true, time.Minute); err != nil {
		t.Fatal(err)
	}
	e.AssertReleased(t, st)
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
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStartCancelled: cancelling Start (cocoond's or cocoonctl's SIGTERM
// cancels its context) while the engine process derives a keyslot key at
// the maximum PBKDF2 cost stops the derivation: Start returns the
// cancellation, and the engine process exits.
func TestStartCancelled(t *testing.T) {
	e := detachedtest.NewEnv(t)
	req := request(e, detached.OpOpen)
	req.Header, req.Device = filepath.Join(e.Dir, "hdr"), filepath.Join(e.Dir, "data.img")
	slowHeader(t, req.Header)
	if err := os.WriteFile(req.Device, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(req.Device, 32<<20); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := detached.Start(ctx, req, []byte("pass"))
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
	if _, err := e.ReadState(); !errors.Is(err, os.ErrNotExist) {
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
				if err := p.Kill(); err != nil {
					t.Logf("killing child %d: %v", pid, err)
				}
			}
		}
	}
}
