package cryptvol

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

func cryptsetup(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("cryptsetup", args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dumpVolumeKey asks cryptsetup for the volume key ("MK dump" lines).
func dumpVolumeKey(t *testing.T, pass []byte, hdrArgs ...string) []byte {
	t.Helper()
	out, err := cryptsetup(t, pass, append([]string{"luksDump", "--dump-volume-key", "--batch-mode", "--key-file", "-"}, hdrArgs...)...)
	if err != nil {
		t.Fatalf("cryptsetup luksDump --dump-volume-key: %v\n%s", err, out)
	}
	_, rest, ok := strings.Cut(out, "MK dump:")
	if !ok {
		t.Fatalf("no MK dump in:\n%s", out)
	}
	key, err := hex.DecodeString(strings.Join(strings.Fields(rest), ""))
	if err != nil {
		t.Fatalf("parsing MK dump: %v", err)
	}
	return key
}

// hdrArgs returns cryptsetup's arguments naming the header and device.
func hdrArgs(hdr, dev string) []string {
	if hdr == "" {
		return []string{dev}
	}
	return []string{"--header", hdr, dev}
}

// TestCryptsetupAcceptsOurHeaders: headers cocoon writes pass luksDump and
// open --test-passphrase, and cryptsetup unseals the same volume key.
func TestCryptsetupAcceptsOurHeaders(t *testing.T) {
	requireCryptsetup(t)
	for _, tc := range []struct {
		name     string
		detached bool
		kdf      luks2.KDFParams
	}{
		{"detached pbkdf2", true, fastKDF},
		{"in place pbkdf2", false, fastKDF},
		{"detached argon2id", true, luks2.KDFParams{Type: "argon2id", Time: 4, MemoryKiB: 1024, CPUs: 1}},
		{"in place argon2i", false, luks2.KDFParams{Type: "argon2i", Time: 4, MemoryKiB: 1024, CPUs: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := t.TempDir()
			dev := filepath.Join(dir, "data.img")
			sparseFile(t, dev, 32<<20)
			hdr := ""
			if tc.detached {
				hdr = filepath.Join(dir, "hdr")
			}
			pass := []byte("interop passphrase")
			if err := Format(ctx, FormatOptions{Header: hdr, Device: dev, Passphrase: pass, KDF: tc.kdf, Label: "cocoon-test"}); err != nil {
				t.Fatal(err)
			}
			out, err := cryptsetup(t, nil, append([]string{"luksDump"}, hdrArgs(hdr, dev)...)...)
			if err != nil {
				t.Fatalf("luksDump rejects our header: %v\n%s", err, out)
			}
			for _, want := range []string{"Version:       \t2", "cipher: aes-xts-plain64", "sector: 4096 [bytes]", "Label:         \tcocoon-test"} {
				if !strings.Contains(out, want) {
					t.Errorf("luksDump output lacks %q:\n%s", want, out)
				}
			}
			if out, err := cryptsetup(t, pass, append([]string{"open", "--test-passphrase", "--key-file", "-"}, hdrArgs(hdr, dev)...)...); err != nil {
				t.Fatalf("cryptsetup open --test-passphrase: %v\n%s", err, out)
			}
			if _, err := cryptsetup(t, []byte("not it"), append([]string{"open", "--test-passphrase", "--key-file", "-"}, hdrArgs(hdr, dev)...)...); err == nil {
				t.Fatal("cryptsetup accepted a wrong passphrase")
			}
			theirs := dumpVolumeKey(t, pass, hdrArgs(hdr, dev)...)
			im, err := readImage(map[bool]string{true: hdr, false: dev}[tc.detached])
			if err != nil {
				t.Fatal(err)
			}
			ours, _, err := im.Unlock(pass)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ours, theirs) || len(ours) != 64 {
				t.Fatal("cryptsetup unseals a different volume key than cocoon")
			}
		})
	}
}

// xtsDecryptPython decrypts consecutive equal-sized sectors, sector i with
// tweak ivs[i], with an independent AES-XTS implementation (OpenSSL through
// python3-cryptography).
func xtsDecryptPython(t *testing.T, key, ct []byte, ivs ...uint64) []byte {
	t.Helper()
	script := `import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); ivs = [int(x) for x in sys.argv[2:]]
data = sys.stdin.buffer.read(); n = len(data) // len(ivs)
for i, iv in enumerate(ivs):
    d = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, "little"))).decryptor()
    sys.stdout.buffer.write(d.update(data[i*n:(i+1)*n]) + d.finalize())`
	args := []string{"-c", script, hex.EncodeToString(key)}
	for _, iv := range ivs {
		args = append(args, fmt.Sprint(iv))
	}
	cmd := exec.Command("python3", args...)
	cmd.Stdin = bytes.NewReader(ct)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 xts: %v: %s", err, stderr.String())
	}
	return out
}

func havePythonXTS() bool {
	return exec.Command("python3", "-c", "from cryptography.hazmat.primitives.ciphers import modes; modes.XTS").Run() == nil
}

// TestCryptsetupVolumesOpenWithCocoon: volumes formatted by cryptsetup
// luksFormat --type luks2 (detached header too) are opened, mounted,
// written and reopened by cocoon; sectors written by the userspace engine
// decrypt, with the key cryptsetup dumps and dm-crypt's IV rule, under an
// independent AES-XTS implementation.
func TestCryptsetupVolumesOpenWithCocoon(t *testing.T) {
	requireRoot(t)
	requireCryptsetup(t)
	for _, tc := range []struct {
		name     string
		detached bool
		pbkdf    []string
	}{
		{"detached pbkdf2", true, []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}},
		{"in place pbkdf2", false, []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}},
		{"detached argon2id", true, []string{"--pbkdf", "argon2id", "--pbkdf-memory", "1024", "--pbkdf-parallel", "1", "--pbkdf-force-iterations", "4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := t.TempDir()
			rt := filepath.Join(dir, "run")
			dev := filepath.Join(dir, "data.img")
			sparseFile(t, dev, 64<<20)
			hdr := ""
			if tc.detached {
				hdr = filepath.Join(dir, "hdr")
			}
			pass := []byte("from cryptsetup")
			args := append([]string{"luksFormat", "--type", "luks2", "--batch-mode", "--sector-size", "4096", "--key-file", "-"}, tc.pbkdf...)
			if out, err := cryptsetup(t, pass, append(args, hdrArgs(hdr, dev)...)...); err != nil {
				t.Fatalf("luksFormat: %v\n%s", err, out)
			}
			key := dumpVolumeKey(t, pass, hdrArgs(hdr, dev)...)
			mnt := filepath.Join(dir, "mnt")
			var v *Volume
			volumeCleanup(t, &v)
			open := func() *Volume {
				v, err := Open(ctx, OpenOptions{Header: hdr, Device: dev, Passphrase: pass, MountDir: mnt, Mkfs: true, Engine: EngineUserspace, RuntimeDir: rt})
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			v = open()
			want := writeMarkedFile(t, filepath.Join(mnt, "f"), 4<<20)
			blockDev := v.Info().BlockDevice
			if havePythonXTS() {
				segOff := int64(0)
				if !tc.detached {
					segOff = 16 << 20 // cryptsetup's default data offset
				}
				compareSectors(t, dev, blockDev, key, segOff)
			} else {
				t.Log("python3-cryptography missing: independent XTS check skipped")
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			v = open()
			if got := hashFile(t, filepath.Join(mnt, "f")); got != want {
				t.Fatal("reopened data differs")
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			v = nil
			assertNothingLeft(t, mnt, rt)
			if out, err := cryptsetup(t, pass, append([]string{"open", "--test-passphrase", "--key-file", "-"}, hdrArgs(hdr, dev)...)...); err != nil {
				t.Fatalf("cryptsetup no longer opens the header after cocoon used it: %v\n%s", err, out)
			}
		})
	}
}

// compareSectors decrypts ciphertext sectors of the backing file with the
// IV dm-crypt uses for LUKS2 (512-byte units: sector k of 4096 bytes has
// IV 8k) and compares them with what the engine's block device returns.
func compareSectors(t *testing.T, backing, blockDev string, key []byte, segOff int64) {
	t.Helper()
	syncFS(t)
	bf, err := os.Open(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	df, err := os.Open(blockDev)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	sectors := []int64{0, 1, 7, 8, 100, 1000}
	var cts, pts []byte
	var ivs []uint64
	for _, k := range sectors {
		ct := make([]byte, 4096)
		if _, err := bf.ReadAt(ct, segOff+k*4096); err != nil {
			t.Fatal(err)
		}
		pt := make([]byte, 4096)
		if _, err := df.ReadAt(pt, k*4096); err != nil {
			t.Fatal(err)
		}
		cts, pts, ivs = append(cts, ct...), append(pts, pt...), append(ivs, uint64(k*8))
	}
	got := xtsDecryptPython(t, key, cts, ivs...)
	for i, k := range sectors {
		if !bytes.Equal(got[i*4096:(i+1)*4096], pts[i*4096:(i+1)*4096]) {
			t.Fatalf("sector %d: independent decryption with IV %d differs from the engine's plaintext", k, k*8)
		}
	}
	if binary.LittleEndian.Uint16(pts[1024+56:]) != 0xEF53 {
		t.Fatal("sector 0 does not hold the ext4 superblock")
	}
}

func syncFS(t *testing.T) {
	t.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
}
