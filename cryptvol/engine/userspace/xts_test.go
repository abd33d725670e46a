package userspace

import (
	"bytes"
	"crypto/aes"
	"testing"

	"golang.org/x/crypto/xts"
)

// TestXTSMatchesReference compares every implementation with
// golang.org/x/crypto/xts for both key sizes, several sector sizes (block
// counts that are and are not multiples of the assembly's eight-block
// stride), in place and into a separate buffer, and tweaks that exercise
// the GF(2^128) carries.
func TestXTSMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		name    string
		keyLen  int
		size    int
		sectors []uint64
	}{
		{"aes-256 4096", 64, 4096, []uint64{0, 1, 8, 1 << 40, ^uint64(0)}},
		{"aes-128 512", 32, 512, []uint64{0, 3, 1 << 63}},
		{"aes-128 4096", 32, 4096, []uint64{9, ^uint64(0) - 1}},
		{"aes-256 16 bytes", 64, 16, []uint64{7}},
		{"aes-128 13 blocks", 32, 13 * 16, []uint64{1<<63 | 1<<62}},
		{"aes-256 8 blocks", 64, 128, []uint64{^uint64(0) >> 1}},
	} {
		key := randBytes(t, tc.keyLen)
		ref, err := xts.NewCipher(aes.NewCipher, key)
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range xtsImpls(t, key) {
			t.Run(tc.name+" "+name, func(t *testing.T) {
				for _, sec := range tc.sectors {
					pt := randBytes(t, tc.size)
					want := make([]byte, tc.size)
					ref.Encrypt(want, pt, sec)
					got := make([]byte, tc.size)
					c.encrypt(got, pt, sec)
					if !bytes.Equal(got, want) {
						t.Fatalf("sector %#x: encryption into a new buffer differs from x/crypto/xts", sec)
					}
					inPlace := bytes.Clone(pt)
					c.encrypt(inPlace, inPlace, sec)
					if !bytes.Equal(inPlace, want) {
						t.Fatalf("sector %#x: in-place encryption differs from x/crypto/xts", sec)
					}
					c.decrypt(got, want, sec)
					if !bytes.Equal(got, pt) {
						t.Fatalf("sector %#x: decryption into a new buffer does not invert", sec)
					}
					c.decrypt(inPlace, inPlace, sec)
					if !bytes.Equal(inPlace, pt) {
						t.Fatalf("sector %#x: in-place decryption does not invert", sec)
					}
				}
			})
		}
	}
}

func TestXTSRejectsBadInput(t *testing.T) {
	if _, err := newXTS(make([]byte, 48)); err == nil {
		t.Fatal("48-byte key accepted")
	}
	for name, c := range xtsImpls(t, make([]byte, 64)) {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				what     string
				dst, src int
			}{{"partial block", 20, 20}, {"short output", 16, 32}} {
				func() {
					defer func() {
						if recover() == nil {
							t.Errorf("%s: no panic", tc.what)
						}
					}()
					c.encrypt(make([]byte, tc.dst), make([]byte, tc.src), 0)
				}()
			}
		})
	}
}

// BenchmarkXTS reports each implementation's speed on 4096-byte sectors as
// a ratio to x/crypto/xts measured in the same run.
func BenchmarkXTS(b *testing.B) {
	key := make([]byte, 64)
	ref, _ := xts.NewCipher(aes.NewCipher, key)
	buf := make([]byte, 4096)
	for name, c := range xtsImpls(b, key) {
		for _, mode := range []string{"encrypt", "decrypt"} {
			b.Run(name+"/"+mode, func(b *testing.B) {
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
						c.encrypt(buf, buf, uint64(i))
					} else {
						c.decrypt(buf, buf, uint64(i))
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
}
