package layer

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fakeAuth is an Authenticator whose verdict the test sets; it records
// whether it was asked and how much of the stream had been read by then.
type fakeAuth struct {
	err    error
	calls  int
	src    *countingReader
	atRead int64
}

func (a *fakeAuth) Verify() error {
	a.calls++
	a.atRead = a.src.n
	return a.err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestAuthenticateWith: the authenticator replaces the blob digest check
// (it is consulted only once the compressed stream was read to its end) and
// never the diff ID check; its refusal is what Verify and CheckBlob report.
func TestAuthenticateWith(t *testing.T) {
	raw := testTar(t, 100_000)
	otherRaw := testTar(t, 100_000)
	refused := errors.New("HMAC mismatch")
	for _, tc := range allMediaTypes {
		blob := compress(t, tc.comp, raw)
		wrongBlobDigest := digest.FromString("not the blob") // ignored once authenticated
		cases := []struct {
			name    string
			diffID  digest.Digest
			authErr error
			want    func(error) bool
		}{
			{"authentic", digest.FromBytes(raw), nil, func(err error) bool { return err == nil }},
			{"refused", digest.FromBytes(raw), refused, func(err error) bool { return errors.Is(err, refused) }},
			{"diff ID still checked", digest.FromBytes(otherRaw), nil, func(err error) bool {
				var dm *DigestMismatchError
				return errors.As(err, &dm) && dm.Kind == KindDiffID
			}},
		}
		for _, c := range cases {
			t.Run(tc.mediaType+"/"+c.name, func(t *testing.T) {
				src := &countingReader{r: bytes.NewReader(blob)}
				auth := &fakeAuth{err: c.authErr, src: src}
				r, err := NewReader(src, tc.mediaType, wrongBlobDigest, c.diffID)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if err := r.AuthenticateWith(auth); err != nil {
					t.Fatal(err)
				}
				_, err = io.Copy(io.Discard, r)
				if !c.want(err) {
					t.Fatalf("read to the end: %v", err)
				}
				if c.authErr != nil || err == nil {
					if auth.calls != 1 || auth.atRead != int64(len(blob)) {
						t.Fatalf("authenticator asked %d times, after %d of %d bytes", auth.calls, auth.atRead, len(blob))
					}
				}
				if c.authErr != nil {
					if err := r.CheckBlob(); !errors.Is(err, refused) {
						t.Fatalf("CheckBlob = %v, want the authenticator's refusal", err)
					}
				}
			})
		}
	}
	t.Run("after the first read", func(t *testing.T) {
		blob := compress(t, compressionGzip, raw)
		r, err := NewReader(bytes.NewReader(blob), MediaTypeOCILayerGzip, digest.FromBytes(blob), "")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.Read(make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		if err := r.AuthenticateWith(&fakeAuth{}); err == nil {
			t.Fatal("an authenticator was accepted after bytes had been checked against the blob digest")
		}
		if err := r.AuthenticateWith(nil); err == nil {
			t.Fatal("nil authenticator accepted")
		}
	})
}
