package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/encrypt"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

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

// encTestLayout writes an OCI layout holding a random two-layer image
// tagged v1. (image/encrypt's tests check the encryption itself.)
func encTestLayout(t *testing.T) string {
	t.Helper()
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := encrypt.WriteRef(context.Background(), "oci:"+dir+":v1", img, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkEncryptedFor checks every layer of img is encrypted for kid.
func checkEncryptedFor(t *testing.T, img v1.Image, kid string) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		raw, _ := base64.StdEncoding.DecodeString(l.Annotations[decrypt.AnnotationAttestationAgent])
		if !decrypt.IsEncrypted(string(l.MediaType)) || !strings.Contains(string(raw), `"kid":"`+kid+`"`) {
			t.Fatalf("layer %d (%s) is not encrypted for %s: %s", i, l.MediaType, kid, raw)
		}
	}
}

func TestEncryptCommand(t *testing.T) {
	_, kekFile := encTestKEK(t)
	srcDir := encTestLayout(t)
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
		checkEncryptedFor(t, img, kid)

		// Encrypting an encrypted image is refused.
		err = runEncrypt(ctx, []string{"--insecure", "--kid", kid, "--key-file", kekFile, dst, reg.Host + "/enc/again:v1"}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "already encrypted") {
			t.Fatalf("re-encrypt: %v", err)
		}
	})
	t.Run("registry to layout", func(t *testing.T) {
		src := reg.Host + "/plain/app:v1"
		if _, err := encrypt.WriteRef(ctx, src, mustOpen(t, "oci:"+srcDir+":v1"), true); err != nil {
			t.Fatal(err)
		}
		dstDir := filepath.Join(t.TempDir(), "out")
		if err := runEncrypt(ctx, []string{"--insecure", "--kid", kid, "--key-file", kekFile, src, "oci:" + dstDir + ":enc"}, io.Discard); err != nil {
			t.Fatal(err)
		}
		checkEncryptedFor(t, mustOpen(t, "oci:"+dstDir+":enc"), kid)
	})
}

func mustOpen(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := encrypt.OpenRef(context.Background(), ref, false)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestEncryptCommandRejects(t *testing.T) {
	_, kekFile := encTestKEK(t)
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := "oci:" + encTestLayout(t) + ":v1"
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
