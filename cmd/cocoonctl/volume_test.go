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

	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/cryptvol/detached/detachedtest"
)

// TestMain lets the test binary be the engine process volume open and
// create start (cryptvol/detached re-executes this binary).
func TestMain(m *testing.M) {
	detached.RunEngineIfRequested()
	runAsCocoonctlIfRequested()
	os.Exit(m.Run())
}

// volEnv adds the CLI's engine flags to detachedtest's directories.
type volEnv struct{ *detachedtest.Env }

func newVolEnv(t *testing.T) volEnv { return volEnv{detachedtest.NewEnv(t)} }

func (e volEnv) engineArgs() []string {
	return []string{"--engine", "userspace", "--runtime-dir", e.Runtime, "--state-dir", e.State}
}

// formatPersistent formats a 64 MiB data file with a detached header and
// checks cryptsetup accepts the passphrase file (when installed).
func (e volEnv) formatPersistent(t *testing.T) (dev, hdr, pf string) {
	t.Helper()
	dev = filepath.Join(e.Dir, "data.img")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 64<<20); err != nil {
		t.Fatal(err)
	}
	hdr = filepath.Join(e.Dir, "hdr")
	pf = filepath.Join(e.Dir, "pass")
	if err := os.WriteFile(pf, []byte("cli passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
func (e volEnv) openPersistent(t *testing.T, dev, hdr, pf string) *detached.State {
	t.Helper()
	args := append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.Mount, "--mkfs"}, e.engineArgs()...)
	if err := runVolumeOpen(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	st, err := e.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	if !detached.ProcessAlive(st.PID, st.StartTime) || !detachedtest.Mounted(t, e.Mount) {
		t.Fatal("volume open returned but nothing serves the mount")
	}
	if b, _ := os.ReadFile(filepath.Join(e.State, filepath.Base(strings.TrimSuffix(st.Log, ".log"))+".json")); bytes.Contains(b, []byte("cli passphrase")) {
		t.Fatal("state file contains the passphrase")
	}
	return st
}

func TestVolumeCLIPersistent(t *testing.T) {
	detachedtest.RequireRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	dev, hdr, pf := e.formatPersistent(t)
	st := e.openPersistent(t, dev, hdr, pf)
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(e.Mount, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := runVolumeOpen(ctx, append([]string{"--header", hdr, "--device", dev, "--passphrase-file", pf, "--mount", e.Mount}, e.engineArgs()...)); err == nil {
		t.Fatal("opened the same mount directory twice")
	}
	if err := runVolumeClose(ctx, []string{"--state-dir", e.State, e.Mount}); err != nil {
		t.Fatal(err)
	}
	e.AssertReleased(t, st)

	st = e.openPersistent(t, dev, hdr, pf)
	got, err := os.ReadFile(filepath.Join(e.Mount, "f"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after reopen differs (%v)", err)
	}
	if err := runVolumeDestroy(ctx, []string{"--state-dir", e.State, e.Mount}); err != nil {
		t.Fatal(err)
	}
	e.AssertReleased(t, st)
	if _, err := os.Stat(st.Log); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroy left the engine log: %v", err)
	}
	if _, err := os.Stat(hdr); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destroy left the header: %v", err)
	}
	if err := runVolumeClose(ctx, []string{"--state-dir", e.State, e.Mount}); err == nil {
		t.Fatal("closing a destroyed volume succeeded")
	}
}

func TestVolumeCLIEphemeral(t *testing.T) {
	detachedtest.RequireRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	backing := filepath.Join(e.Dir, "scratch.img")
	if err := runVolumeCreate(ctx, append([]string{"--backing", backing, "--size", "48M", "--mount", e.Mount}, e.engineArgs()...)); err != nil {
		t.Fatal(err)
	}
	st, err := e.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ephemeral || st.Engine != "userspace" {
		t.Fatalf("state %+v", st)
	}
	marker := []byte("EPHEMERAL-PLAINTEXT-MARKER-c0c00n")
	if err := os.WriteFile(filepath.Join(e.Mount, "m"), bytes.Repeat(marker, 1<<15), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, marker) {
		t.Fatal("backing file contains plaintext")
	}
	if err := runVolumeDestroy(ctx, []string{"--state-dir", e.State, e.Mount}); err != nil {
		t.Fatal(err)
	}
	e.AssertReleased(t, st)
	if _, err := os.Stat(backing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destroy left the backing file: %v", err)
	}
}

func TestVolumeCLIFailures(t *testing.T) {
	detachedtest.RequireRoot(t)
	ctx := context.Background()
	e := newVolEnv(t)
	dev := filepath.Join(e.Dir, "data.img")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dev, 32<<20); err != nil {
		t.Fatal(err)
	}
	pf := filepath.Join(e.Dir, "pass")
	wrong := filepath.Join(e.Dir, "wrong")
	if err := os.WriteFile(pf, []byte("right"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runVolumeFormat(ctx, []string{"--device", dev, "--passphrase-file", pf, "--pbkdf2-iterations", "1000"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"wrong passphrase", []string{"--device", dev, "--passphrase-file", wrong, "--mount", e.Mount, "--mkfs"}, "no keyslot opens"},
		{"not a LUKS device", []string{"--device", pf, "--passphrase-file", pf, "--mount", e.Mount}, "invalid LUKS2 header"},
		{"missing passphrase file", []string{"--device", dev, "--mount", e.Mount}, "--passphrase-file is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runVolumeOpen(ctx, append(tc.args, e.engineArgs()...))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if detachedtest.Mounted(t, e.Mount) {
				t.Fatal("mount left after a failed open")
			}
			if _, err := e.ReadState(); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("state file after a failed open: %v", err)
			}
		})
	}
	t.Run("close unknown", func(t *testing.T) {
		if err := runVolumeClose(ctx, []string{"--state-dir", e.State, filepath.Join(e.Dir, "nothing")}); err == nil {
			t.Fatal("closed a directory that is no volume")
		}
	})
}
