package userspace

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
)

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// pythonXTS en- or decrypts consecutive sectors of data, sector i with
// tweaks[i], with OpenSSL's AES-XTS through python3-cryptography, an
// implementation independent of ours (one process for all sectors).
func pythonXTS(t *testing.T, encrypt bool, key, data []byte, tweaks ...uint64) []byte {
	t.Helper()
	if exec.Command("python3", "-c", "from cryptography.hazmat.primitives.ciphers import modes; modes.XTS").Run() != nil {
		t.Skip("needs python3-cryptography for an independent AES-XTS")
	}
	op := "decryptor"
	if encrypt {
		op = "encryptor"
	}
	script := fmt.Sprintf(`import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); tweaks = [int(x) for x in sys.argv[2:]]
data = sys.stdin.buffer.read(); n = len(data) // len(tweaks)
for i, tw in enumerate(tweaks):
    c = Cipher(algorithms.AES(key), modes.XTS(tw.to_bytes(16, "little"))).%s()
    sys.stdout.buffer.write(c.update(data[i*n:(i+1)*n]) + c.finalize())`, op)
	args := []string{"-c", script, hex.EncodeToString(key)}
	for _, tw := range tweaks {
		args = append(args, fmt.Sprint(tw))
	}
	cmd := exec.Command("python3", args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 xts: %v", err)
	}
	return out
}

// TestSectorCipherIV checks the plain64 IV rule for LUKS2 (512-byte units
// plus iv_tweak) against an independent AES-XTS, sector by sector.
func TestSectorCipherIV(t *testing.T) {
	for _, tc := range []struct {
		name       string
		keyLen     int
		sectorSize int
		ivTweak    uint64
		segOff     int64
		wantIVs    []uint64
	}{
		{"4096-byte sectors", 64, 4096, 0, 0, []uint64{0, 8, 16}},
		{"4096 with iv_tweak", 64, 4096, 5, 8192, []uint64{16 + 5, 24 + 5, 32 + 5}},
		{"512-byte sectors aes-128", 32, 512, 0, 0, []uint64{0, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := randBytes(t, tc.keyLen)
			sc, err := NewSectorCipher(key, tc.sectorSize, tc.ivTweak)
			if err != nil {
				t.Fatal(err)
			}
			pt := randBytes(t, 3*tc.sectorSize)
			ct := bytes.Clone(pt)
			sc.Encrypt(ct, tc.segOff)
			got := pythonXTS(t, false, key, ct, tc.wantIVs...)
			for i, iv := range tc.wantIVs {
				if !bytes.Equal(got[i*tc.sectorSize:(i+1)*tc.sectorSize], pt[i*tc.sectorSize:(i+1)*tc.sectorSize]) {
					t.Fatalf("sector %d does not decrypt with IV %d", i, iv)
				}
			}
			sc.Decrypt(ct, tc.segOff)
			if !bytes.Equal(ct, pt) {
				t.Fatal("decrypt(encrypt(x)) != x")
			}
		})
	}
}

func TestSectorCipherParallelMatchesSerial(t *testing.T) {
	key := randBytes(t, 64)
	sc, _ := NewSectorCipher(key, 4096, 0)
	pt := randBytes(t, 64*4096)
	par := bytes.Clone(pt)
	sc.Encrypt(par, 4096*10) // 64 sectors: split across workers
	for i := 0; i < 64; i++ {
		one := bytes.Clone(pt[i*4096 : (i+1)*4096])
		sc.Encrypt(one, int64(4096*(10+i)))
		if !bytes.Equal(one, par[i*4096:(i+1)*4096]) {
			t.Fatalf("sector %d differs between parallel and serial encryption", i)
		}
	}
}

// TestAttachReadWrite drives the engine through its block device: aligned
// and unaligned writes land encrypted on the backing file at the segment
// offset, and read back.
func TestAttachReadWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE, loop devices)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	backing := filepath.Join(dir, "backing")
	const segOff, size = 8192, 1 << 20
	if err := os.WriteFile(backing, make([]byte, segOff+size), 0o600); err != nil {
		t.Fatal(err)
	}
	key := randBytes(t, 64)
	for _, tc := range []struct {
		name     string
		buffered bool
	}{{"direct loop", false}, {"buffered loop", true}} {
		t.Run(tc.name, func(t *testing.T) {
			rt := filepath.Join(dir, "run")
			e := New(Options{RuntimeDir: rt, BufferedLoop: tc.buffered})
			dev, err := e.Attach(ctx, engine.Target{Name: "t", Backing: backing, Offset: segOff, Size: size, Cipher: "aes-xts-plain64", Key: key, SectorSize: 4096})
			if err != nil {
				t.Fatal(err)
			}
			detached := false
			t.Cleanup(func() {
				if !detached {
					if err := dev.Detach(ctx); err != nil {
						t.Error(err)
					}
				}
			})
			f, err := os.OpenFile(dev.Path(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			aligned := randBytes(t, 8192)
			odd := randBytes(t, 1000)
			if _, err := f.WriteAt(aligned, 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(odd, 4096+100); err != nil { // partial sector
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(aligned)
			copy(want[100:], odd)
			got := make([]byte, len(want))
			if _, err := f.ReadAt(got, 4096); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if !bytes.Equal(got, want) {
				t.Fatal("block device read differs from what was written")
			}
			if err := dev.Detach(ctx); err != nil {
				t.Fatal(err)
			}
			detached = true
			if entries, _ := os.ReadDir(rt); len(entries) != 0 {
				t.Fatalf("FUSE mount point left behind: %v", entries)
			}
			raw, err := os.ReadFile(backing)
			if err != nil {
				t.Fatal(err)
			}
			ct := raw[segOff+4096 : segOff+4096+8192]
			if bytes.Contains(raw, odd[:64]) {
				t.Fatal("plaintext reached the backing file")
			}
			if got := pythonXTS(t, false, key, ct, 8, 16); !bytes.Equal(got, want) {
				t.Fatal("sectors on the backing file do not decrypt independently with IVs 8 and 16")
			}
		})
	}
}

func TestAttachRejectsBadTargets(t *testing.T) {
	e := New(Options{RuntimeDir: t.TempDir()})
	good := engine.Target{Name: "t", Backing: "/nonexistent", Size: 4096, Cipher: "aes-xts-plain64", Key: make([]byte, 64), SectorSize: 4096}
	for _, tc := range []struct {
		name   string
		mutate func(*engine.Target)
	}{
		{"cipher", func(t *engine.Target) { t.Cipher = "aes-cbc-essiv:sha256" }},
		{"key size", func(t *engine.Target) { t.Key = make([]byte, 48) }},
		{"sector size", func(t *engine.Target) { t.SectorSize = 100 }},
		{"unaligned size", func(t *engine.Target) { t.Size = 5000 }},
		{"missing backing", func(t *engine.Target) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := good
			tc.mutate(&tg)
			if _, err := e.Attach(context.Background(), tg); err == nil {
				t.Fatal("attach succeeded")
			}
		})
	}
}
