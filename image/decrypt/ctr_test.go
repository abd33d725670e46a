package decrypt_test

import (
	"crypto/aes"
	"crypto/cipher"
	"testing"
)

func ctrXOR(t testing.TB, key, iv, in []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(in))
	cipher.NewCTR(b, iv).XORKeyStream(out, in)
	return out
}
