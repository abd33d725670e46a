package userspace

import (
	"bytes"
	"crypto/aes"
	"testing"

	"golang.org/x/crypto/xts"
)

// TestXTSMatchesReference compares the bulk construction with
// golang.org/x/crypto/xts for both key sizes, several sector sizes and
// tweaks that exercise the GF(2^128) carry.
func TestXTSMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		name    string
		keyLen  int
		size    int
		sectors []uint64
	}{
		{"aes-256 4096", 64, 4096, []uint64{0, 1, 8, 1 << 40, ^uint64(0)}},
		{"aes-128 512", 32, 512, []uint64{0, 3, 1 << 63}},
		{"aes-256 16 bytes", 64, 16, []uint64{7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := randBytes(t, tc.keyLen)
			ref, err := xts.NewCipher(aes.NewCipher, key)
			if err != nil {
				t.Fatal(err)
			}
			ours, err := newXTS(key)
			if err != nil {
				t.Fatal(err)
			}
			for _, sec := range tc.sectors {
				pt := randBytes(t, tc.size)
				want := make([]byte, tc.size)
				ref.Encrypt(want, pt, sec)
				got := bytes.Clone(pt)
				ours.encryptSector(got, sec)
				if !bytes.Equal(got, want) {
					t.Fatalf("sector %d: encryption differs from x/crypto/xts", sec)
				}
				ours.decryptSector(got, sec)
				if !bytes.Equal(got, pt) {
					t.Fatalf("sector %d: decryption does not invert", sec)
				}
			}
		})
	}
}

// BenchmarkXTS reports the bulk construction's speed as a ratio to
// x/crypto/xts measured in the same run.
func BenchmarkXTS(b *testing.B) {
	key := make([]byte, 64)
	ref, _ := xts.NewCipher(aes.NewCipher, key)
	ours, _ := newXTS(key)
	buf := make([]byte, 4096)
	for _, mode := range []string{"encrypt", "decrypt"} {
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(4096)
			var refNs, ourNs int64
			for i := 0; i < b.N; i++ {
				start := nanotime()
				if mode == "encrypt" {
					ref.Encrypt(buf, buf, uint64(i))
				} else {
					ref.Decrypt(buf, buf, uint64(i))
				}
				mid := nanotime()
				if mode == "encrypt" {
					ours.encryptSector(buf, uint64(i))
				} else {
					ours.decryptSector(buf, uint64(i))
				}
				end := nanotime()
				refNs += mid - start
				ourNs += end - mid
			}
			b.ReportMetric(float64(refNs)/float64(max(ourNs, 1)), "speedup-vs-x/crypto/xts")
			b.ReportMetric(float64(b.N)*4096/1e6/(float64(ourNs)/1e9), "ours-MB/s")
		})
	}
}
