package decrypt_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// TestLayerKeyTransfer: a marshalled and unmarshalled key decrypts every
// range and verifies the HMAC exactly as the original; any truncation or
// extension of the encoding is refused; a cleared key does not marshal.
func TestLayerKeyTransfer(t *testing.T) {
	plain := bytes.Repeat([]byte("cocoon lazy key transfer "), 4000)
	l := newLazyLayer(t, plain, nil, nil)
	b, err := l.key.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	k, err := decrypt.UnmarshalLayerKey(b)
	if err != nil {
		t.Fatal(err)
	}
	if k.Layer() != l.key.Layer() || k.Size() != l.key.Size() || k.PlainDigest() != l.key.PlainDigest() ||
		!bytes.Equal(k.Nonce(), l.key.Nonce()) || !bytes.Equal(k.ExpectedHMAC(), l.key.ExpectedHMAC()) {
		t.Fatal("unmarshalled key parameters differ")
	}
	ra, err := k.NewReaderAt(sliceSource(l.ct))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, 15, 16, 17, 4097, int64(len(plain)) - 33} {
		p := make([]byte, 33)
		if _, err := ra.ReadAt(context.Background(), p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, plain[off:off+33]) {
			t.Fatalf("range at %d decrypts wrongly with the transferred key", off)
		}
	}
	if err := k.VerifyHMAC(bytes.NewReader(l.ct)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, b[:len(b)-1], append(bytes.Clone(b), 0), append([]byte{9}, b[1:]...)} {
		if _, err := decrypt.UnmarshalLayerKey(bad); !errors.Is(err, decrypt.ErrLayerKeyEncoding) {
			t.Fatalf("malformed encoding of %d bytes: %v", len(bad), err)
		}
	}
	k.Clear()
	if _, err := k.MarshalBinary(); err == nil {
		t.Fatal("a cleared key marshalled")
	}
}
