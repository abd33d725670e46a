package cryptvol

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// TestDeviceOnly: a device-only volume exposes the decrypted block device
// under the requested name and mounts nothing; what is written to that
// device reads back after a reopen, and the backing holds only ciphertext.
func TestDeviceOnly(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	rt := filepath.Join(dir, "run")
	dev := filepath.Join(dir, "data.img")
	sparseFile(t, dev, 32<<20)
	pass := []byte("device only")
	if err := Format(ctx, FormatOptions{Device: dev, Passphrase: pass, KDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat(marker, 4096/len(marker)+1)[:4096]
	var v *Volume
	volumeCleanup(t, &v)
	open := func() {
		t.Helper()
		var err error
		v, err = Open(ctx, OpenOptions{Device: dev, Passphrase: pass, DeviceOnly: true, Name: "devonly-test", Engine: EngineUserspace, RuntimeDir: rt})
		if err != nil {
			t.Fatal(err)
		}
		if v.MountDir() != "" {
			t.Fatalf("device-only volume has mount dir %q", v.MountDir())
		}
		var st unix.Stat_t
		if err := unix.Stat(v.BlockDevice(), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			t.Fatalf("block device %q: mode %o, %v", v.BlockDevice(), st.Mode, err)
		}
		if src := engineMountSource(t, v.Info().EngineMount); src != "cocoon-cryptvol:devonly-test" {
			t.Fatalf("engine mount source %q does not carry the requested name", src)
		}
	}
	open()
	if err := os.WriteFile(v.BlockDevice(), block, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if v.BlockDevice() != "" {
		t.Fatalf("closed volume still names %q", v.BlockDevice())
	}
	v = nil
	assertNothingLeft(t, "", rt)
	if fileContains(t, dev, marker) {
		t.Fatal("backing holds the plaintext")
	}
	open()
	got := make([]byte, len(block))
	f, err := os.Open(v.BlockDevice())
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 0)
	f.Close()
	if err != nil || !bytes.Equal(got, block) {
		t.Fatalf("read back after reopening differs (%v)", err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v = nil
	assertNothingLeft(t, "", rt)
}

// TestEphemeralDeviceOnly: an ephemeral device-only volume over an
// existing backing creates no file system.
func TestEphemeralDeviceOnly(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	rt := filepath.Join(dir, "run")
	backing := filepath.Join(dir, "scratch.img")
	sparseFile(t, backing, 32<<20)
	var v *Volume
	volumeCleanup(t, &v)
	v, err := CreateEphemeral(ctx, EphemeralOptions{Backing: backing, DeviceOnly: true, Engine: EngineUserspace, RuntimeDir: rt})
	if err != nil {
		t.Fatal(err)
	}
	if has, err := hasExt4(v.BlockDevice()); err != nil || has {
		t.Fatalf("device-only ephemeral volume got a file system (%v)", err)
	}
	if !v.Info().Ephemeral {
		t.Fatal("not marked ephemeral")
	}
	if err := v.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	v = nil
	if _, err := os.Stat(backing); err != nil {
		t.Fatalf("caller's backing file removed: %v", err)
	}
	assertNothingLeft(t, "", rt)
}

func TestDeviceOnlyOptionErrors(t *testing.T) {
	ctx := testCtx(t)
	for name, o := range map[string]OpenOptions{
		"mount dir": {Device: "/nonexistent", DeviceOnly: true, MountDir: "/mnt"},
		"mkfs":      {Device: "/nonexistent", DeviceOnly: true, Mkfs: true},
		"no device": {DeviceOnly: true},
		"no mount":  {Device: "/nonexistent"},
		"nothing":   {},
	} {
		if _, err := Open(ctx, o); err == nil || !strings.HasPrefix(err.Error(), "open: ") {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if _, err := CreateEphemeral(ctx, EphemeralOptions{Backing: "/nonexistent", DeviceOnly: true, MountDir: "/mnt"}); err == nil {
		t.Error("ephemeral device-only volume accepted a mount dir")
	}
}

// engineMountSource returns the mount source of the userspace engine's
// FUSE mount at dir.
func engineMountSource(t *testing.T, dir string) string {
	t.Helper()
	m, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(m) != 1 {
		t.Fatalf("engine mount %s: %v (%d entries)", dir, err, len(m))
	}
	return m[0].Source
}
