package securemount

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// firstBytes reads the start of the device, to show a refused request
// did not write to it.
func firstBytes(t *testing.T, dev string) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1<<20)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRefusalsTouchNothing: requests cocoon refuses (dataIntegrity, an
// unknown volume type, a device in use, a mount point or device already
// held) leave the device as it was and mount nothing.
func TestRefusalsTouchNothing(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, _ := newLoop(t, diskSize)
	if err := os.WriteFile(dev, markedData(1<<20), 0); err != nil {
		t.Fatal(err)
	}
	before := firstBytes(t, dev)
	m, rt := newMounter(t, Options{Resources: &fakeKBS{res: map[string][]byte{"kbs:///default/vol/key": []byte("k")}}})
	point := filepath.Join(t.TempDir(), "mnt")
	opts := func(set ...string) map[string]string {
		o := map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem", "key": "kbs:///default/vol/key"}
		for i := 0; i+1 < len(set); i += 2 {
			o[set[i]] = set[i+1]
		}
		return o
	}
	check := func(name string, err, class error, text string) {
		t.Helper()
		if !errors.Is(err, class) || !strings.Contains(err.Error(), text) {
			t.Errorf("%s: error %v, want %v containing %q", name, err, class, text)
		}
		assertNothingAt(t, point)
		assertNoEngine(t, rt)
		if !bytes.Equal(firstBytes(t, dev), before) {
			t.Fatalf("%s: the device was written", name)
		}
	}
	_, err := m.SecureMount(ctx, "block-device", opts("dataIntegrity", "true"), nil, point)
	check("dataIntegrity", err, ErrIntegrityUnsupported,
		"Error when mounting Block device: Error when doing luks2 operation: dataIntegrity `true` needs dm-integrity")
	_, err = m.SecureMount(ctx, "aliyun", opts(), nil, point)
	check("unknown volume type", err, ErrUnknownVolumeType, "Failed to recognize the storage type: Matching variant not found")
	_, err = m.SecureMount(ctx, "block-device", opts("key", "https://kbs/key"), nil, point)
	check("key scheme", err, ErrInvalidOptions,
		"Error when mounting Block device: The scheme of the key uri should be `kbs`, `file` or `sealed`")

	// A device the kernel has in use (here: held exclusively, as a mount
	// or a dm mapping holds it) is refused, as cryptsetup refuses it.
	holder, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.SecureMount(ctx, "block-device", opts(), nil, point)
	holder.Close()
	check("device in use", err, ErrBusy, "Error when doing luks2 operation: Failed to encrypt LUKS2 device: "+dev+": the device is in use")

	// A failure after formatting (mkfs refuses the block size) wipes the
	// header it wrote: nothing half-made can be opened later.
	_, err = m.SecureMount(ctx, "block-device", opts("mkfsOpts", "-b 1000"), nil, point)
	if !errors.Is(err, ErrLUKS2) || !strings.Contains(err.Error(), "Failed to make filesystem Ext4 of device /dev/loop") {
		t.Fatalf("bad mkfs: %v", err)
	}
	assertNothingAt(t, point)
	assertNoEngine(t, rt)
	if out, err := cryptsetup(t, nil, "isLuks", dev); err == nil {
		t.Fatalf("the header of a failed set-up survived\n%s", out)
	}
}

// TestBusy: one device, one mount point and one mapper name serve one
// secure mount at a time; under the userspace engine the device stays
// claimed while mounted.
func TestBusy(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, _ := newLoop(t, diskSize)
	other, _ := newLoop(t, diskSize)
	m, _ := newMounter(t, Options{})
	dir := t.TempDir()
	point := filepath.Join(dir, "a")
	opts := func(dev string) map[string]string {
		return map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem", "mapperName": "busy-" + filepath.Base(dev)}
	}
	if _, err := m.SecureMount(ctx, "block-device", opts(dev), nil, point); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0); !errors.Is(err, unix.EBUSY) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("the source device is not claimed while mounted: %v", err)
	}
	for name, tc := range map[string]struct {
		opts  map[string]string
		point string
		text  string
	}{
		"same device":      {opts(dev), filepath.Join(dir, "b"), "the device is already secure-mounted at " + point},
		"same mount point": {opts(other), point, "mount point " + point + " already holds a secure mount"},
		"same mapper name": {map[string]string{"devicePath": other, "sourceType": "empty", "encryptionType": "luks2", "targetType": "device", "mapperName": "busy-" + filepath.Base(dev)}, filepath.Join(dir, "c"), "mapperName `busy-"},
	} {
		_, err := m.SecureMount(ctx, "block-device", tc.opts, nil, tc.point)
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A busy file system stays mounted and unmounts once released.
	f, err := os.Create(filepath.Join(point, "open"))
	if err != nil {
		t.Fatal(err)
	}
	err = m.Unmount(ctx, point)
	if !errors.Is(err, ErrBusy) || !strings.HasPrefix(err.Error(), "Failed to umount device "+point+": ") || !isMounted(t, point) {
		f.Close()
		t.Fatalf("unmount while busy: %v", err)
	}
	f.Close()
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	assertNothingAt(t, point)
	if _, err := m.SecureMount(ctx, "block-device", opts(other), nil, point); err != nil {
		t.Fatal(err)
	}
}

// TestReap: the kata-agent unmounts what SecureMount mounted itself. A
// volume whose file system is still mounted elsewhere (a bind mount into
// a container) is kept; once no mount is left it is released, and the
// next SecureMount of the device succeeds.
func TestReap(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, _ := newLoop(t, diskSize)
	m, rt := newMounter(t, Options{})
	dir := t.TempDir()
	point, bind := filepath.Join(dir, "mnt"), filepath.Join(dir, "bind")
	opts := map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem"}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
	if err := m.Reap(ctx); err != nil || !isMounted(t, point) {
		t.Fatalf("reaped a mounted volume (%v)", err)
	}
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(point, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if isMounted(t, bind) {
			if err := unix.Unmount(bind, unix.MNT_DETACH); err != nil {
				t.Errorf("unmounting the bind mount: %v", err)
			}
		}
	})
	if err := unix.Unmount(point, 0); err != nil { // as the agent does
		t.Fatal(err)
	}
	if err := m.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bind, "f"), []byte("still served"), 0o600); err != nil {
		t.Fatalf("the volume under a bind mount was released: %v", err)
	}
	if err := unix.Unmount(bind, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatalf("the device was not released for a new secure mount: %v", err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	assertNothingAt(t, point)
	assertNoEngine(t, rt)
}
