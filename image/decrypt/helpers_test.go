package decrypt_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
)

// newKBS starts a development KBS on loopback holding resources (path
// repo/type/tag -> bytes) and returns a client attesting with the sample
// attester.
func newKBS(tb testing.TB, resources map[string][]byte) *kbs.Client {
	tb.Helper()
	dir := tb.TempDir()
	for p, b := range resources {
		f := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	srv, err := server.New(server.Options{
		Repository: dir,
		Policy:     server.AllowAllPolicy,
		Verifiers:  []attest.Verifier{sample.NewVerifier()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	tb.Cleanup(func() { ts.Close(); srv.Close() })
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), HTTPTimeout: 10 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func randomKey(tb testing.TB) []byte {
	tb.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		tb.Fatal(err)
	}
	return k
}

// testLayer is a plain layer blob with its metadata.
type testLayer struct {
	blob      []byte
	mediaType string
	diffID    digest.Digest
}

// makeLayer builds a tar of n files of size bytes each (half random, so
// that gzip does not shrink it to nothing), gzipped when gz.
func makeLayer(tb testing.TB, gz bool, n, size int) testLayer {
	tb.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for i := range n {
		data := make([]byte, size)
		if _, err := rand.Read(data[:size/2]); err != nil {
			tb.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%03d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: time.Unix(1700000000, 0)}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	l := testLayer{diffID: digest.FromBytes(tarBuf.Bytes()), blob: tarBuf.Bytes(), mediaType: layer.MediaTypeOCILayer}
	if gz {
		var gzBuf bytes.Buffer
		zw := gzip.NewWriter(&gzBuf)
		if _, err := zw.Write(tarBuf.Bytes()); err != nil {
			tb.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			tb.Fatal(err)
		}
		l.blob, l.mediaType = gzBuf.Bytes(), layer.MediaTypeOCILayerGzip
	}
	return l
}

// encrypted is an encrypted layer as a registry would serve it.
type encrypted struct {
	blob []byte
	desc ocispec.Descriptor
}

// encryptLayer encrypts l for the attestation-agent provider with kek at kid.
func encryptLayer(tb testing.TB, l testLayer, kek []byte, kid string) encrypted {
	tb.Helper()
	e, err := decrypt.NewEncrypter(bytes.NewReader(l.blob), digest.FromBytes(l.blob))
	if err != nil {
		tb.Fatal(err)
	}
	ct, err := io.ReadAll(e)
	if err != nil {
		tb.Fatal(err)
	}
	ann, err := e.Annotations(kek, kid)
	if err != nil {
		tb.Fatal(err)
	}
	return encrypted{blob: ct, desc: ocispec.Descriptor{
		MediaType:   decrypt.EncryptedMediaType(l.mediaType),
		Digest:      digest.FromBytes(ct),
		Size:        int64(len(ct)),
		Annotations: ann,
	}}
}

// decryptAll runs the pull pipeline's order of checks: decrypt, decompress
// with the decryption checks (HMAC, ciphertext digest) standing for the plain
// digest, then the diff ID.
func decryptAll(ctx context.Context, enc encrypted, diffID digest.Digest, o decrypt.Options) error {
	r, err := decrypt.NewReader(ctx, bytes.NewReader(enc.blob), enc.desc, o)
	if err != nil {
		return err
	}
	lr, err := layer.NewReader(r, decrypt.PlainMediaType(enc.desc.MediaType), r.PlainDigest(), diffID)
	if err != nil {
		return err
	}
	defer lr.Close()
	if err := lr.AuthenticateWith(r); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, lr); err != nil {
		// Failure path: CheckBlob drains the decrypted stream, so the
		// HMAC verdict comes out as the root cause.
		return errors.Join(err, lr.CheckBlob())
	}
	return lr.Verify() // r.Verify (HMAC, ciphertext digest), then the diff ID
}

// fakeResources serves fixed resources without attestation (unit tests of
// the unwrap logic; the KBS path is covered by newKBS).
type fakeResources map[string][]byte

func (f fakeResources) GetResource(_ context.Context, uri string) ([]byte, error) {
	b, ok := f[uri]
	if !ok {
		return nil, fmt.Errorf("resource %s: not found", uri)
	}
	return bytes.Clone(b), nil
}
