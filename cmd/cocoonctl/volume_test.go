package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
)

// TestMain lets the test binary be the engine process volume open and
// create start (cryptvol/detached re-executes this binary).
func TestMain(m *testing.M) {
	detached.RunEngineIfRequested()
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
		if st, err := readStateFor(e); err == nil {
			if detached.ProcessAlive(st.PID, st.StartTime) {
				runVolumeClose(context.Background(), []string{"--state-dir", e.state, e.mount})
			}
		}
		if st, err := readStateFor(e); err == nil && detached.ProcessAlive(st.PID, st.StartTime) {
			p, _ := os.FindProcess(st.PID)
			p.Kill()
		}
	})
	return e
}

func readStateFor(e *volEnv) (*detached.State, error) {
	_, p, _, err := detached.StatePaths(e.state, e.mount)
	if err != nil {
		return nil, err
	}
	return detached.ReadState(p)
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
func (e *volEnv) assertReleased(t *testing.T, st *detached.State) {
	t.Helper()
	if detached.ProcessAlive(st.PID, st.StartTime) {
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

// formatPersistent formats a 64 MiB data file with a detached header and
// checks cryptsetup accepts the passphrase file (when installed).
func (e *volEnv) formatPersistent(t *testing.T) (dev, hdr, pf string) {
	t.Helper()
	dev = filepath.Join(e.dir, "data.img")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 64<<20); err != nil {
		t.Fatal(err)
	}
	hdr = filepath.Join(e.dir, "hdr")
	pf = filepath.Join(e.dir, "pass")
	os.WriteFile(pf, []byte("cli passphrase\n"), 0o600)
	if err := runVolumeFormat(context.Background(), []string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--pbkdf2-iterations", "1000"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("cryptsetup"); err == nil {
		if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", pf, "--header", hdr, dev).CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup rejects the passphrase file cocoonctl formatted with: %v\n%s", err, out)
		}
	}
	return dev, hdr, pf
}

// openPersistent runs volume open and checks an engine process serves the
// mount and the state file holds no passphrase.
func (e *volEnv) openPersistent(t *testing.T, dev, hdr, pf string) *detached.State {
	t.Helper()
	args := append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.mount, "--mkfs"}, e.engineArgs()...)
	if err := runVolumeOpen(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	st, err := readStateFor(e)
	if err != nil {
		t.Fatal(err)
	}
	if !detached.ProcessAlive(st.PID, st.StartTime) || !mounted(t, e.mount) {
		t.Fatal("volume open returned but nothing serves the mount")
	}
	if b, _ := os.ReadFile(filepath.Join(e.state, filepath.Base(strings.TrimSuffix(st.Log, ".log"))+".json")); bytes.Contains(b, []byte("cli passphrase")) {
		t.Fatal("state file contains the passphrase")
	}
	return st
}

func TestVolumeCLIPersistent(t *testing.T) {
	requireVolumeRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	dev, hdr, pf := e.formatPersistent(t)
	st := e.openPersistent(t, dev, hdr, pf)
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

	st = e.openPersistent(t, dev, hdr, pf)
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
