package securemount

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

const diskSize = 64 << 20

// TestKBSKeyLifecycle is the kata-agent's confidential emptyDir round
// trip: an empty device with a kbs:/// key is formatted and mounted,
// written, unmounted; cryptsetup reads the header and accepts the key;
// the device mounts again as "encrypted" (this time named by deviceId)
// and the data reads back.
func TestKBSKeyLifecycle(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, backing := newLoop(t, diskSize)
	key := randomKey(t)
	getter := &fakeKBS{res: map[string][]byte{"kbs:///default/vol/key": key}}
	m, rt := newMounter(t, Options{Resources: getter})
	point := filepath.Join(t.TempDir(), "mnt")
	opts := map[string]string{
		"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem",
		"filesystemType": "ext4", "key": "kbs:///default/vol/key", "mkfsOpts": "-L cocoonvol -m 0",
	}
	got, err := m.SecureMount(ctx, "block-device", opts, []string{"ignored"}, point)
	if err != nil {
		t.Fatal(err)
	}
	if got != point {
		t.Fatalf("mount path %q, want the mount point %q", got, point)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(point, &st); err != nil || st.Type != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("mount point is not ext4: type %#x, %v", st.Type, err)
	}
	// mkfsOpts reached mkfs.ext4: the label is in the superblock.
	sb := make([]byte, 16)
	f, err := os.Open(mountSource(t, point))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(sb, 1024+120) // s_volume_name
	f.Close()
	if err != nil || string(bytes.TrimRight(sb, "\x00")) != "cocoonvol" {
		t.Fatalf("volume label %q (%v)", sb, err)
	}
	data := markedData(1 << 20)
	if err := os.WriteFile(filepath.Join(point, "data"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	assertNothingAt(t, point)
	assertNoEngine(t, rt)
	if fileContains(t, backing) {
		t.Fatal("the device holds the plaintext")
	}

	out, err := cryptsetup(t, nil, "luksDump", dev)
	if err != nil || !strings.Contains(out, "aes-xts-plain64") {
		t.Fatalf("cryptsetup luksDump rejects the header: %v\n%s", err, out)
	}
	if out, err := cryptsetup(t, key, "open", "--test-passphrase", "--key-file", "-", dev); err != nil {
		t.Fatalf("cryptsetup does not accept the KBS key: %v\n%s", err, out)
	}

	reopen := maps.Clone(opts)
	delete(reopen, "devicePath")
	delete(reopen, "mkfsOpts")
	reopen["deviceId"] = deviceID(t, dev)
	reopen["sourceType"] = "encrypted"
	if _, err := m.SecureMount(ctx, "block-device", reopen, nil, point); err != nil {
		t.Fatal(err)
	}
	back, err := os.ReadFile(filepath.Join(point, "data"))
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("data read after remounting differs (%v)", err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	assertNothingAt(t, point)
	if len(getter.asked) != 2 || getter.asked[0] != "kbs:///default/vol/key" {
		t.Fatalf("KBS asked %v", getter.asked)
	}
	if err := m.Unmount(ctx, point); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("second unmount: %v", err)
	}
}

// TestWrongKey: a wrong key fails with upstream's wording and ErrWrongKey,
// leaves nothing mounted and frees the mount point and device.
func TestWrongKey(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, _ := newLoop(t, diskSize)
	dir := t.TempDir()
	right, wrong := filepath.Join(dir, "right"), filepath.Join(dir, "wrong")
	if err := os.WriteFile(right, []byte("right key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, []byte("wrong key"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, rt := newMounter(t, Options{})
	point := filepath.Join(dir, "mnt")
	opts := map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem", "key": "file://" + right}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	opts["sourceType"] = "encrypted"
	opts["key"] = "file://" + wrong
	_, err := m.SecureMount(ctx, "block-device", opts, nil, point)
	if !errors.Is(err, ErrWrongKey) || !errors.Is(err, ErrLUKS2) {
		t.Fatalf("wrong key: %v", err)
	}
	const prefix = "Error when mounting Block device: Error when doing luks2 operation: Failed to open LUKS2 device: "
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Fatalf("error %q lacks upstream's %q", err, prefix)
	}
	t.Logf("wrong key: %v", err)
	assertNothingAt(t, point)
	assertNoEngine(t, rt)
	// Nothing was reserved: the right key mounts at the same place.
	opts["key"] = "file://" + right
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
}

// TestEphemeralDevice: no key makes an ephemeral volume whose header is
// nowhere on the device; targetType device links the decrypted block
// device at the mount point; mapperName names the engine's mount.
func TestEphemeralDevice(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, backing := newLoop(t, diskSize)
	m, rt := newMounter(t, Options{})
	point := filepath.Join(t.TempDir(), "dev", "scratch")
	opts := map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "device", "mapperName": "cocoon-test-eph", "dataIntegrity": "false"}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(point)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(point, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("%s -> %s is not a block device (%v)", point, target, err)
	}
	engineMount := filepath.Join(rt, onlyEntry(t, rt))
	if src := mountSource(t, engineMount); src != "cocoon-cryptvol:cocoon-test-eph" {
		t.Fatalf("engine mount source %q does not carry mapperName", src)
	}
	data := markedData(64 << 10)
	if err := os.WriteFile(point, data, 0); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(data))
	f, err := os.Open(point)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(back, 0)
	f.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back through the link differs (%v)", err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	assertNothingAt(t, point)
	if _, err := os.Lstat(point); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("symlink left: %v", err)
	}
	if fileContains(t, backing) {
		t.Fatal("the device holds the plaintext")
	}
	if out, err := cryptsetup(t, nil, "isLuks", dev); err == nil {
		t.Fatalf("an ephemeral volume left a LUKS header on the device\n%s", out)
	}
}

func onlyEntry(t *testing.T, dir string) string {
	t.Helper()
	e, err := os.ReadDir(dir)
	if err != nil || len(e) != 1 {
		t.Fatalf("%s: %v, %d entries", dir, err, len(e))
	}
	return e[0].Name()
}

// TestCryptsetupVolume: a volume cryptsetup formatted (argon2id keyslot,
// key file) opens with a file:// key as a device; ext4 made on it mounts
// again as a fileSystem.
func TestCryptsetupVolume(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dev, _ := newLoop(t, diskSize)
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, randomKey(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := cryptsetup(t, nil, "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--sector-size", "4096",
		"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1", dev, keyFile); err != nil {
		t.Fatalf("cryptsetup luksFormat: %v\n%s", err, out)
	}
	m, _ := newMounter(t, Options{})
	link := filepath.Join(t.TempDir(), "plain")
	opts := map[string]string{"devicePath": dev, "sourceType": "encrypted", "encryptionType": "luks2", "targetType": "device", "key": "file://" + keyFile}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, link); err != nil {
		t.Fatal(err)
	}
	if out, err := run("mkfs.ext4", "-q", link); err != nil {
		t.Fatalf("mkfs.ext4 on the linked device: %v\n%s", err, out)
	}
	if err := m.Unmount(ctx, link); err != nil {
		t.Fatal(err)
	}
	point := filepath.Join(t.TempDir(), "mnt")
	delete(opts, "devicePath")
	opts["deviceId"] = deviceID(t, dev)
	opts["targetType"] = "fileSystem"
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(point, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSealedKey: the key is kata's pre-created sealed secret (an upstream
// vector signed with kata's test key), unsealed through the KBS.
func TestSealedKey(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	raw, err := os.ReadFile("../../secretsfs/sealed/testdata/kata-precreated-sealed-secrets.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		JWK     json.RawMessage   `json:"signing_public_jwk"`
		KidURI  string            `json:"signing_public_jwk_provisioned_at"`
		Secrets map[string]string `json:"secrets"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	key := randomKey(t)
	getter := &fakeKBS{res: map[string][]byte{
		v.KidURI:                            v.JWK,
		"kbs:///default/sealed-secret/test": key, // the vault secret SEALED_SECRET_PRECREATED_TEST names
	}}
	m, _ := newMounter(t, Options{Unsealer: &sealed.Unsealer{Resources: getter}})
	dev, _ := newLoop(t, diskSize)
	point := filepath.Join(t.TempDir(), "mnt")
	opts := map[string]string{"devicePath": dev, "sourceType": "empty", "encryptionType": "luks2", "targetType": "fileSystem", "key": v.Secrets["SEALED_SECRET_PRECREATED_TEST"]}
	if _, err := m.SecureMount(ctx, "block-device", opts, nil, point); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx, point); err != nil {
		t.Fatal(err)
	}
	if out, err := cryptsetup(t, key, "open", "--test-passphrase", "--key-file", "-", dev); err != nil {
		t.Fatalf("the volume does not open with the unsealed key: %v\n%s", err, out)
	}
	// A tampered signature is refused before the device is touched.
	opts["key"] = v.Secrets["SEALED_SECRET_PRECREATED_TEST"][:len(v.Secrets["SEALED_SECRET_PRECREATED_TEST"])-4] + "AAAA"
	_, err = m.SecureMount(ctx, "block-device", opts, nil, point)
	if !errors.Is(err, ErrKey) || !strings.HasPrefix(err.Error(), "Error when mounting Block device: Failed to get key: ") {
		t.Fatalf("tampered sealed key: %v", err)
	}
	if out, err := cryptsetup(t, key, "open", "--test-passphrase", "--key-file", "-", dev); err != nil {
		t.Fatalf("a refused request touched the volume: %v\n%s", err, out)
	}
}
