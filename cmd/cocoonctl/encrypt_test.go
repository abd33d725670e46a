package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// encTestKBS starts a development KBS holding kek at default/image-kek/1
// and returns its URL and a client using the sample attester.
func encTestKBS(t *testing.T, kek []byte) (string, *kbs.Client) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "default", "image-kek", "1")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { ts.Close(); srv.Close() })
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), HTTPTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ts.URL, c
}

// encTestKEK writes a random KEK to a file (test key material in a test
// temp dir) and returns both.
func encTestKEK(t *testing.T) ([]byte, string) {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return kek, p
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
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	return dir, img
}

var packetKeyOrder = regexp.MustCompile(`^\{"kid":"[^"]+","wrapped_data":"[A-Za-z0-9+/=]+","iv":"[A-Za-z0-9+/=]{16}","wrap_type":"A256GCM"\}$`)

// checkEncryptedImage decrypts every layer of img with the KEK from the
// KBS and compares diff IDs with the source image.
func checkEncryptedImage(t *testing.T, img, src v1.Image, kid string, client *kbs.Client) {
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
		dr, err := decrypt.NewReader(context.Background(), rc, desc, decrypt.Options{Resources: client})
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

func TestEncryptCommand(t *testing.T) {
	kek, kekFile := encTestKEK(t)
	_, client := encTestKBS(t, kek)
	srcDir, srcImg := encTestLayout(t)
	reg := regtest.Start(t)
	const kid = "kbs:///default/image-kek/1"
	ctx := context.Background()

	t.Run("layout to registry", func(t *testing.T) {
		dst := reg.Host + "/enc/app:v1"
		var out bytes.Buffer
		if err := runEncrypt(ctx, []string{"--insecure", "--kid", kid, "--key-file", kekFile, "oci:" + srcDir + ":v1", dst}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out.String(), dst+"@sha256:") {
			t.Fatalf("output %q", out.String())
		}
		ref, _ := name.ParseReference(dst, name.Insecure)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := img.Digest(); !strings.Contains(out.String(), d.String()) {
			t.Fatalf("printed %q, pushed %s", out.String(), d)
		}
		checkEncryptedImage(t, img, srcImg, kid, client)

		// Encrypting an encrypted image is refused.
		err = runEncrypt(ctx, []string{"--insecure", "--kid", kid, "--key-file", kekFile, dst, reg.Host + "/enc/again:v1"}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "already encrypted") {
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
		if err := runEncrypt(ctx, []string{"--insecure", "--kid", kid, "--key-file", kekFile, src, "oci:" + dstDir + ":enc"}, io.Discard); err != nil {
			t.Fatal(err)
		}
		img, err := openImage(ctx, "oci:"+dstDir+":enc", false)
		if err != nil {
			t.Fatal(err)
		}
		checkEncryptedImage(t, img, srcImg, kid, client)
	})
}

func TestEncryptCommandRejects(t *testing.T) {
	_, kekFile := encTestKEK(t)
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	srcDir, _ := encTestLayout(t)
	src := "oci:" + srcDir + ":v1"
	dst := "oci:" + filepath.Join(t.TempDir(), "out")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no kid", []string{"--key-file", kekFile, src, dst}, "--kid"},
		{"kid without scheme", []string{"--kid", "/default/image-kek/1", "--key-file", kekFile, src, dst}, "kbs:///"},
		{"short KEK", []string{"--kid", "kbs:///a/b/c", "--key-file", short, src, dst}, "16 bytes"},
		{"missing tag", []string{"--kid", "kbs:///a/b/c", "--key-file", kekFile, src + "x", dst}, "no image tagged"},
		{"one ref", []string{"--kid", "kbs:///a/b/c", "--key-file", kekFile, src}, "SRC_REF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runEncrypt(context.Background(), tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
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

var _ = json.Marshal
