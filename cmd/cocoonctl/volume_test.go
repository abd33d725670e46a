package main

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

// TestMain lets the test binary stand in for cocoonctl when volume open and
// create re-execute themselves as the engine process.
func TestMain(m *testing.M) {
	if os.Getenv("COCOONCTL_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
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
	t.Setenv("COCOONCTL_TEST_AS_MAIN", "1")
}

type volEnv struct {
	dir, state, runtime, mount string
}

func newVolEnv(t *testing.T) *volEnv {
	dir := t.TempDir()
	e := &volEnv{dir: dir, state: filepath.Join(dir, "state"), runtime: filepath.Join(dir, "run"), mount: filepath.Join(dir, "mnt")}
	// Whatever happens, stop engine processes and unmount.
	t.Cleanup(func() {
		if st, err := readStateFor(e); err == nil {
			if processAlive(st.PID, st.StartTime) {
				runVolumeClose(context.Background(), []string{"--state-dir", e.state, e.mount})
			}
		}
		if st, err := readStateFor(e); err == nil && processAlive(st.PID, st.StartTime) {
			p, _ := os.FindProcess(st.PID)
			p.Kill()
		}
	})
	return e
}

func readStateFor(e *volEnv) (*volumeState, error) {
	_, p, _, err := statePaths(e.state, e.mount)
	if err != nil {
		return nil, err
	}
	return readState(p)
}

func (e *volEnv) engineArgs() []string {
	return []string{"--engine", "userspace", "--runtime-dir", e.runtime, "--state-dir", e.state}
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
func (e *volEnv) assertReleased(t *testing.T, st *volumeState) {
	t.Helper()
	if processAlive(st.PID, st.StartTime) {
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
	if _, err := readStateFor(e); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}

func TestVolumeCLIPersistent(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	dev := filepath.Join(e.dir, "data.img")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 64<<20); err != nil {
		t.Fatal(err)
	}
	hdr := filepath.Join(e.dir, "hdr")
	pf := filepath.Join(e.dir, "pass")
	os.WriteFile(pf, []byte("cli passphrase\n"), 0o600)
	if err := runVolumeFormat(ctx, []string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--pbkdf2-iterations", "1000"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("cryptsetup"); err == nil {
		if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", pf, "--header", hdr, dev).CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup rejects the passphrase file cocoonctl formatted with: %v\n%s", err, out)
		}
	}
	open := func() *volumeState {
		t.Helper()
		args := append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.mount, "--mkfs"}, e.engineArgs()...)
		if err := runVolumeOpen(ctx, args); err != nil {
			t.Fatal(err)
		}
		st, err := readStateFor(e)
		if err != nil {
			t.Fatal(err)
		}
		if !processAlive(st.PID, st.StartTime) || !mounted(t, e.mount) {
			t.Fatal("volume open returned but nothing serves the mount")
		}
		if b, _ := os.ReadFile(filepath.Join(e.state, filepath.Base(strings.TrimSuffix(st.Log, ".log"))+".json")); bytes.Contains(b, []byte("cli passphrase")) {
			t.Fatal("state file contains the passphrase")
		}
		return st
	}
	st := open()
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(e.mount, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := runVolumeOpen(ctx, append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.mount}, e.engineArgs()...)); err == nil {
		t.Fatal("opened the same mount directory twice")
	}
	if err := runVolumeClose(ctx, []string{"--state-dir", e.state, e.mount}); err != nil {
		t.Fatal(err)
	}
	e.assertReleased(t, st)

	st = open()
	got, err := os.ReadFile(filepath.Join(e.mount, "f"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after reopen differs (%v)", err)
	}
	if err := runVolumeDestroy(ctx, []string{"--state-dir", e.state, e.mount}); err != nil {
		t.Fatal(err)
	}
	e.assertReleased(t, st)
	if _, err := os.Stat(st.Log); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroy left the engine log: %v", err)
	}
	if _, err := os.Stat(hdr); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destroy left the header: %v", err)
	}
	if err := runVolumeClose(ctx, []string{"--state-dir", e.state, e.mount}); err == nil {
		t.Fatal("closing a destroyed volume succeeded")
	}
}

func TestVolumeCLIEphemeral(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	backing := filepath.Join(e.dir, "scratch.img")
	if err := runVolumeCreate(ctx, append([]string{"--backing", backing, "--size", "48M", "--mount", e.mount}, e.engineArgs()...)); err != nil {
		t.Fatal(err)
	}
	st, err := readStateFor(e)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ephemeral || st.Engine != "userspace" {
		t.Fatalf("state %+v", st)
	}
	marker := []byte("EPHEMERAL-PLAINTEXT-MARKER-c0c00n")
	if err := os.WriteFile(filepath.Join(e.mount, "m"), bytes.Repeat(marker, 1<<15), 0o644); err != nil {
		t.Fatal(err)
	}
	exec.Command("sync").Run()
	raw, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, marker) {
		t.Fatal("backing file contains plaintext")
	}
	if err := runVolumeDestroy(ctx, []string{"--state-dir", e.state, e.mount}); err != nil {
		t.Fatal(err)
	}
	e.assertReleased(t, st)
	if _, err := os.Stat(backing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destroy left the backing file: %v", err)
	}
}

func TestVolumeCLIFailures(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	dev := filepath.Join(e.dir, "data.img")
	os.WriteFile(dev, nil, 0o600)
	os.Truncate(dev, 32<<20)
	pf := filepath.Join(e.dir, "pass")
	wrong := filepath.Join(e.dir, "wrong")
	os.WriteFile(pf, []byte("right"), 0o600)
	os.WriteFile(wrong, []byte("wrong"), 0o600)
	if err := runVolumeFormat(ctx, []string{"--device", dev, "--passphrase-file", pf, "--pbkdf2-iterations", "1000"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"wrong passphrase", []string{"--device", dev, "--passphrase-file", wrong, "--mount", e.mount, "--mkfs"}, "no keyslot opens"},
		{"not a LUKS device", []string{"--device", pf, "--passphrase-file", pf, "--mount", e.mount}, "invalid LUKS2 header"},
		{"missing passphrase file", []string{"--device", dev, "--mount", e.mount}, "--passphrase-file is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runVolumeOpen(ctx, append(tc.args, e.engineArgs()...))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if mounted(t, e.mount) {
				t.Fatal("mount left after a failed open")
			}
			if _, err := readStateFor(e); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("state file after a failed open: %v", err)
			}
		})
	}
	t.Run("close unknown", func(t *testing.T) {
		if err := runVolumeClose(ctx, []string{"--state-dir", e.state, filepath.Join(e.dir, "nothing")}); err == nil {
			t.Fatal("closed a directory that is no volume")
		}
	})
}

// TestVolumeCLICrashCleanup kills the engine process and checks close
// still releases the mount and the loop device.
func TestVolumeCLICrashCleanup(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	backing := filepath.Join(e.dir, "scratch.img")
	if err := runVolumeCreate(ctx, append([]string{"--backing", backing, "--size", "32M", "--mount", e.mount}, e.engineArgs()...)); err != nil {
		t.Fatal(err)
	}
	st, err := readStateFor(e)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := os.FindProcess(st.PID)
	p.Kill()
	for deadline := time.Now().Add(10 * time.Second); processAlive(st.PID, st.StartTime); {
		if time.Now().After(deadline) {
			t.Fatal("engine process survived SIGKILL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := runVolumeDestroy(ctx, []string{"--state-dir", e.state, e.mount}); err != nil {
		t.Fatal(err)
	}
	e.assertReleased(t, st)
	if _, err := os.Stat(backing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("backing file left: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"100M", 100 << 20, true}, {"1G", 1 << 30, true}, {"2GiB", 2 << 30, true},
		{"512k", 512 << 10, true}, {"0", 0, false}, {"-1M", 0, false}, {"lots", 0, false}, {"", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSize(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("parseSize(%q) = %d, %v", tc.in, got, err)
			}
		})
	}
}

// TestVolumeOpenCancelled: cancelling volume open (SIGTERM on cocoonctl
// cancels its context) while the engine process derives a keyslot key at
// cryptsetup's maximum PBKDF2 cost (an hour or more) stops the derivation:
// open returns the cancellation, and the engine process exits.
func TestVolumeOpenCancelled(t *testing.T) {
	t.Setenv("COCOONCTL_TEST_AS_MAIN", "1")
	e := newVolEnv(t)
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
	hdr, dev, pf := filepath.Join(e.dir, "hdr"), filepath.Join(e.dir, "data.img"), filepath.Join(e.dir, "pass")
	os.WriteFile(hdr, img, 0o600)
	os.WriteFile(pf, []byte("pass"), 0o600)
	os.WriteFile(dev, nil, 0o600)
	os.Truncate(dev, 32<<20)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runVolumeOpen(ctx, append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.mount}, e.engineArgs()...))
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
		t.Fatal("volume open did not return after cancellation")
	}
	if _, err := readStateFor(e); !errors.Is(err, os.ErrNotExist) {
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
