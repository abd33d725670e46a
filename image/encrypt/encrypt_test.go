package encrypt

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// kekAt serves one KEK at one kid, standing in for the KBS the guest
// fetches it from.
type kekAt struct {
	kid string
	kek []byte
}

func (k kekAt) GetResource(_ context.Context, uri string) ([]byte, error) {
	if uri != k.kid {
		return nil, fmt.Errorf("no resource %s", uri)
	}
	return bytes.Clone(k.kek), nil // the caller clears what it gets
}

// encTestKEK returns a random KEK.
func encTestKEK(t *testing.T) []byte {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	return kek
}

func encTestTar(t *testing.T, files int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range files {
		data := make([]byte, 20<<10)
		rand.Read(data[:10<<10])
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("dir/f%d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// encTestLayout writes an OCI layout with one image tagged v1: a gzip
// layer and an uncompressed one.
func encTestLayout(t *testing.T) (string, v1.Image) {
	t.Helper()
	gz := encTestTar(t, 3)
	gzLayer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	plain := static.NewLayer(encTestTar(t, 2), types.OCIUncompressedLayer)
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: gzLayer, MediaType: types.OCILayer, Annotations: map[string]string{"org.example.keep": "yes"}},
		mutate.Addendum{Layer: plain, MediaType: types.OCIUncompressedLayer})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	return dir, img
}

var packetKeyOrder = regexp.MustCompile(`^\{"kid":"[^"]+","wrapped_data":"[A-Za-z0-9+/=]+","iv":"[A-Za-z0-9+/=]{16}","wrap_type":"A256GCM"\}$`)

// checkEncryptedImage decrypts every layer of img with the KEK from the
// KBS (kekAt) and compares diff IDs with the source image.
func checkEncryptedImage(t *testing.T, img, src v1.Image, kid string, kek []byte) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	srcCfg, _ := src.ConfigFile()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || len(m.Layers) != len(srcCfg.RootFS.DiffIDs) {
		t.Fatalf("manifest %s with %d layers", m.MediaType, len(m.Layers))
	}
	if d1, _ := img.ConfigName(); d1 != func() v1.Hash { d, _ := src.ConfigName(); return d }() {
		t.Fatal("config changed")
	}
	for i, l := range m.Layers {
		if !decrypt.IsEncrypted(string(l.MediaType)) {
			t.Fatalf("layer %d media type %s", i, l.MediaType)
		}
		raw, err := base64.StdEncoding.DecodeString(l.Annotations[decrypt.AnnotationAttestationAgent])
		if err != nil {
			t.Fatal(err)
		}
		if !packetKeyOrder.Match(raw) || !strings.Contains(string(raw), `"kid":"`+kid+`"`) {
			t.Fatalf("packet %s is not what coco_keyprovider writes", raw)
		}
		if _, err := decrypt.ParsePublicOptions(l.Annotations[decrypt.AnnotationPubOpts]); err != nil {
			t.Fatal(err)
		}
		if i == 0 && l.Annotations["org.example.keep"] != "yes" {
			t.Errorf("layer annotation not kept: %v", l.Annotations)
		}
		rl, err := img.LayerByDigest(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := rl.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		desc := ocispec.Descriptor{MediaType: string(l.MediaType), Digest: digest.Digest(l.Digest.String()), Size: l.Size, Annotations: l.Annotations}
		dr, err := decrypt.NewReader(context.Background(), rc, desc, decrypt.Options{Resources: kekAt{kid: kid, kek: kek}})
		if err != nil {
			t.Fatal(err)
		}
		diffID := digest.Digest(cfg.RootFS.DiffIDs[i].String())
		if diffID != digest.Digest(srcCfg.RootFS.DiffIDs[i].String()) {
			t.Fatalf("diff ID %d changed", i)
		}
		lr, err := layer.NewReader(dr, decrypt.PlainMediaType(desc.MediaType), dr.PlainDigest(), diffID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, lr); err != nil {
			t.Fatal(err)
		}
		if err := lr.Verify(); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if err := dr.Verify(); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		lr.Close()
		rc.Close()
		srcLayers, _ := src.Layers()
		if d, _ := srcLayers[i].Digest(); digest.Digest(d.String()) != dr.PlainDigest() {
			t.Fatalf("layer %d plain digest %s, source %s", i, dr.PlainDigest(), d)
		}
	}
}

// encryptTo encrypts the image at src and writes it to dst, as cocoonctl
// encrypt does, returning the manifest digest written.
func encryptTo(t *testing.T, src, dst string, kek []byte, kid string) (v1.Hash, error) {
	t.Helper()
	ctx := context.Background()
	img, err := OpenRef(ctx, src, true)
	if err != nil {
		return v1.Hash{}, err
	}
	enc, err := Image(ctx, img, Options{KEK: kek, KID: kid, TmpDir: t.TempDir()})
	if err != nil {
		return v1.Hash{}, err
	}
	defer enc.Close()
	out, err := enc.Image()
	if err != nil {
		return v1.Hash{}, err
	}
	return WriteRef(ctx, dst, out, true)
}

func TestImage(t *testing.T) {
	kek := encTestKEK(t)
	srcDir, srcImg := encTestLayout(t)
	reg := regtest.Start(t)
	const kid = "kbs:///default/image-kek/1"

	t.Run("layout to registry", func(t *testing.T) {
		dst := reg.Host + "/enc/app:v1"
		d, err := encryptTo(t, "oci:"+srcDir+":v1", dst, kek, kid)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(dst, name.Insecure)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		if pushed, _ := img.Digest(); pushed != d {
			t.Fatalf("returned %s, pushed %s", d, pushed)
		}
		checkEncryptedImage(t, img, srcImg, kid, kek)

		// Encrypting an encrypted image is refused.
		if _, err := encryptTo(t, dst, reg.Host+"/enc/again:v1", kek, kid); err == nil || !strings.Contains(err.Error(), "already encrypted") {
			t.Fatalf("re-encrypt: %v", err)
		}
	})
	t.Run("registry to layout", func(t *testing.T) {
		src := reg.Host + "/plain/app:v1"
		ref, _ := name.ParseReference(src, name.Insecure)
		if err := remote.Write(ref, srcImg); err != nil {
			t.Fatal(err)
		}
		dstDir := filepath.Join(t.TempDir(), "out")
		if _, err := encryptTo(t, src, "oci:"+dstDir+":enc", kek, kid); err != nil {
			t.Fatal(err)
		}
		img, err := OpenRef(context.Background(), "oci:"+dstDir+":enc", false)
		if err != nil {
			t.Fatal(err)
		}
		checkEncryptedImage(t, img, srcImg, kid, kek)
	})
}

func TestOpenRefRejects(t *testing.T) {
	srcDir, _ := encTestLayout(t)
	if _, err := OpenRef(context.Background(), "oci:"+srcDir+":v1x", false); err == nil || !strings.Contains(err.Error(), "no image tagged") {
		t.Fatalf("missing tag: %v", err)
	}
}

func TestSplitLayoutRef(t *testing.T) {
	tests := []struct{ in, dir, tag string }{
		{"oci:/tmp/x", "/tmp/x", ""},
		{"oci:/tmp/x:v1", "/tmp/x", "v1"},
		{"oci:rel/dir:latest", "rel/dir", "latest"},
		{"oci:/a:b/c", "/a:b/c", ""},
	}
	for _, tt := range tests {
		if dir, tag := splitLayoutRef(tt.in); dir != tt.dir || tag != tt.tag {
			t.Errorf("splitLayoutRef(%q) = %q, %q", tt.in, dir, tag)
		}
	}
}
