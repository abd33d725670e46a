//go:build amd64 && !purego

package userspace

import "testing"

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
