//go:build amd64 && !purego

package userspace

import "testing"

// acceleratedXTS returns the AES-NI code alone and, where the CPU has
// AVX-512 VAES, the VAES code (with AES-NI for what is not a multiple of
// 16 blocks).
func acceleratedXTS(key []byte) map[string]sectorXTS {
	impls := map[string]sectorXTS{}
	if c := newAESNIXTS(key); c != nil {
		a := c.(*aesniXTS)
		if a.vaes {
			impls["vaes"] = a
			plain := *a
			plain.vaes = false
			impls["aesni"] = &plain
		} else {
			impls["aesni"] = a
		}
	}
	return impls
}

// TestAESNIWipe checks that wiping leaves no key schedule behind.
func TestAESNIWipe(t *testing.T) {
	c := newAESNIXTS(randBytes(t, 64))
	if c == nil {
		t.Skip("no AES-NI on this CPU")
	}
	c.wipe()
	a := c.(*aesniXTS)
	var zero [15 * 16]byte
	if a.enc != zero || a.dec != zero || a.tweak != zero {
		t.Fatal("key schedule survived wipe")
	}
}
