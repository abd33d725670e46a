package decrypt_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// BenchmarkDecrypt measures Reader (ocicrypt AES-256-CTR + HMAC-SHA256,
// plus the SHA-256 of the encrypted blob that Verify checks) over a 64 MiB
// layer against a raw single-core AES-256-CTR + HMAC-SHA256 loop over the
// same bytes with the same buffer size, in the same run. It reports both
// throughputs and their ratio ("x-raw", 1.0 = as fast as the raw loop),
// and the ratio against the raw loop plus the blob SHA-256 that Reader must
// also compute ("x-raw+digest": the overhead of the Reader itself).
func BenchmarkDecrypt(b *testing.B) {
	const size = 64 << 20
	plain := make([]byte, size)
	if _, err := rand.Read(plain); err != nil {
		b.Fatal(err)
	}
	kek := randomKey(b)
	e, err := decrypt.NewEncrypter(bytes.NewReader(plain), digest.FromBytes(plain))
	if err != nil {
		b.Fatal(err)
	}
	ct, err := io.ReadAll(e)
	if err != nil {
		b.Fatal(err)
	}
	plbco, pubJSON, err := e.PrivateOptions()
	if err != nil {
		b.Fatal(err)
	}
	var priv struct {
		Key  []byte            `json:"symkey"`
		Opts map[string][]byte `json:"cipheroptions"`
	}
	if err := json.Unmarshal(plbco, &priv); err != nil {
		b.Fatal(err)
	}
	packet, err := decrypt.WrapKey(kek, "kbs:///default/k/1", plbco)
	if err != nil {
		b.Fatal(err)
	}
	desc := ocispec.Descriptor{
		MediaType: "application/vnd.oci.image.layer.v1.tar+encrypted",
		Digest:    digest.FromBytes(ct),
		Size:      int64(len(ct)),
		Annotations: map[string]string{
			decrypt.AnnotationAttestationAgent: base64.StdEncoding.EncodeToString(packet),
			decrypt.AnnotationPubOpts:          base64.StdEncoding.EncodeToString(pubJSON),
		},
	}
	var pub struct {
		Hmac []byte `json:"hmac"`
	}
	if err := json.Unmarshal(pubJSON, &pub); err != nil {
		b.Fatal(err)
	}
	res := fakeResources{"kbs:///default/k/1": kek}
	buf := make([]byte, 32<<10) // io.Copy's buffer size

	raw := func(blobDigest bool) {
		block, _ := aes.NewCipher(priv.Key)
		stream := cipher.NewCTR(block, priv.Opts["nonce"])
		mac := hmac.New(sha256.New, priv.Key)
		blob := sha256.New()
		for off := 0; off < len(ct); off += len(buf) {
			chunk := ct[off:min(off+len(buf), len(ct))]
			if blobDigest {
				blob.Write(chunk)
			}
			mac.Write(chunk)
			stream.XORKeyStream(buf[:len(chunk)], chunk)
		}
		if !hmac.Equal(mac.Sum(nil), pub.Hmac) {
			b.Fatal("raw HMAC mismatch")
		}
	}
	measured := func() {
		r, err := decrypt.NewReader(context.Background(), bytes.NewReader(ct), desc, decrypt.Options{Resources: res})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
			b.Fatal(err)
		}
		if err := r.Verify(); err != nil {
			b.Fatal(err)
		}
	}
	var rawT, rawDigestT, ourT time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	iterations := 0
	for b.Loop() {
		iterations++
		start := time.Now()
		raw(false)
		rawT += time.Since(start)
		start = time.Now()
		raw(true)
		rawDigestT += time.Since(start)
		start = time.Now()
		measured()
		ourT += time.Since(start)
	}
	n := float64(iterations)
	mb := float64(size) / (1 << 20)
	b.ReportMetric(mb*n/ourT.Seconds(), "MiB/s")
	b.ReportMetric(mb*n/rawT.Seconds(), "raw-MiB/s")
	b.ReportMetric(rawT.Seconds()/ourT.Seconds(), "x-raw")
	b.ReportMetric(rawDigestT.Seconds()/ourT.Seconds(), "x-raw+digest")
}
