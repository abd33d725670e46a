package lazysource

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// TestCipherSinkOrder: segments handed over out of order, repeated and
// overlapping, concurrently, hash as the blob in order; a wrong byte is a
// failed precondition.
func TestCipherSinkOrder(t *testing.T) {
	plain := bytes.Repeat([]byte("eStargz plaintext "), 4096)
	enc, err := decrypt.NewEncrypter(bytes.NewReader(plain), digest.FromBytes(plain))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := io.ReadAll(enc)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := enc.Annotations(testKEK, kid)
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip + "+encrypted", Digest: digest.FromBytes(ct), Size: int64(len(ct)), Annotations: ann}
	key, err := decrypt.UnwrapLayer(context.Background(), desc, decrypt.Options{Resources: resources{kid: testKEK}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tamper := range []bool{false, true} {
		data := bytes.Clone(ct)
		if tamper {
			data[len(data)/2] ^= 1
		}
		sink, err := newCipherSink(key, desc)
		if err != nil {
			t.Fatal(err)
		}
		const seg = 1000
		var wg sync.WaitGroup
		for off := (len(data) - 1) / seg * seg; off >= 0; off -= seg {
			end := min(off+seg, len(data))
			wg.Go(func() {
				if err := sink.put(context.Background(), data[off:end], int64(off)); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		// A repeated, overlapping read changes nothing.
		if err := sink.put(context.Background(), data[500:2500], 500); err != nil {
			t.Fatal(err)
		}
		err = sink.verify()
		if tamper != (err != nil) || (tamper && !errors.Is(err, errdefs.ErrFailedPrecondition)) {
			t.Fatalf("tampered=%v: verify = %v", tamper, err)
		}
	}
}
