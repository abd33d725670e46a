package unpack_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

// TestVerifiedPipeline runs the full-pull path the snapshotter uses: a gzip
// blob through layer.NewReader into Extract, then Verify. Extract stops at
// the tar end-of-archive marker; Verify must drain the padding and the gzip
// trailer and still accept the blob, and must reject a wrong diff ID.
func TestVerifiedPipeline(t *testing.T) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write([]byte("cocoon")); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	// Extra zero blocks after end-of-archive, as some writers produce.
	raw.Write(make([]byte, 10240))
	var blob bytes.Buffer
	zw := gzip.NewWriter(&blob)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		diffID digest.Digest
		ok     bool
	}{
		{"valid", digest.FromBytes(raw.Bytes()), true},
		{"wrong diff id", digest.FromString("other"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r, err := layer.NewReader(bytes.NewReader(blob.Bytes()), layer.MediaTypeOCILayerGzip, digest.FromBytes(blob.Bytes()), tc.diffID)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, err := unpack.Extract(context.Background(), r, dir, unpack.Options{}); err != nil {
				t.Fatal(err)
			}
			if r.UncompressedBytes() >= int64(raw.Len()) {
				t.Fatalf("Extract consumed the padding; the test does not exercise Verify's drain")
			}
			err = r.Verify()
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if b, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil || string(b) != "cocoon" {
					t.Fatalf("etc/hostname = %q, %v", b, err)
				}
				return
			}
			var dm *layer.DigestMismatchError
			if !errors.As(err, &dm) || dm.Kind != layer.KindDiffID || !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("got %v, want a diff-id mismatch", err)
			}
		})
	}
}
