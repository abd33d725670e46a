package decrypt_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
)

// readVector reads a file of testdata/ (see testdata/README.md).
func readVector(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMediaTypes(t *testing.T) {
	tests := []struct {
		in        string
		encrypted bool
		plain     string
	}{
		{"application/vnd.oci.image.layer.v1.tar+gzip+encrypted", true, "application/vnd.oci.image.layer.v1.tar+gzip"},
		{"application/vnd.oci.image.layer.v1.tar+encrypted", true, "application/vnd.oci.image.layer.v1.tar"},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd+encrypted", true, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"},
		{"application/vnd.oci.image.layer.v1.tar+gzip", false, "application/vnd.oci.image.layer.v1.tar+gzip"},
		{"application/vnd.docker.image.rootfs.diff.tar.gzip", false, "application/vnd.docker.image.rootfs.diff.tar.gzip"},
		{"", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := decrypt.IsEncrypted(tt.in); got != tt.encrypted {
				t.Errorf("IsEncrypted = %v, want %v", got, tt.encrypted)
			}
			if got := decrypt.PlainMediaType(tt.in); got != tt.plain {
				t.Errorf("PlainMediaType = %q, want %q", got, tt.plain)
			}
			if got := decrypt.EncryptedMediaType(tt.plain); tt.plain != "" && got != tt.plain+"+encrypted" {
				t.Errorf("EncryptedMediaType = %q", got)
			}
		})
	}
}

// TestRoundTripThroughKBS encrypts layers and decrypts them with the KEK
// fetched from a development KBS after sample attestation.
func TestRoundTripThroughKBS(t *testing.T) {
	kek := randomKey(t)
	client := newKBS(t, map[string][]byte{"default/image-kek/1": kek})
	tests := []struct {
		name       string
		gz         bool
		files, len int
	}{
		{"gzip", true, 8, 32 << 10},
		{"uncompressed", false, 8, 32 << 10},
		{"empty-tar", false, 0, 0},
		{"tiny-gzip", true, 1, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := makeLayer(t, tt.gz, tt.files, tt.len)
			enc := encryptLayer(t, l, kek, "kbs:///default/image-kek/1")
			if !strings.HasSuffix(enc.desc.MediaType, "+encrypted") {
				t.Fatalf("media type %s", enc.desc.MediaType)
			}
			if bytes.Contains(enc.blob, l.blob[:min(len(l.blob), 64)]) {
				t.Fatal("ciphertext contains the plaintext")
			}
			if err := decryptAll(context.Background(), enc, l.diffID, decrypt.Options{Resources: client}); err != nil {
				t.Fatalf("decrypt: %v", err)
			}
		})
	}
}

func TestUnwrapFailures(t *testing.T) {
	kek := randomKey(t)
	client := newKBS(t, map[string][]byte{
		"default/image-kek/1":     kek,
		"default/image-kek/other": randomKey(t),
		"default/image-kek/short": []byte("0123456789"),
	})
	l := makeLayer(t, true, 2, 1024)
	tests := []struct {
		name    string
		kid     string
		opts    decrypt.Options
		want    []string
		wantIs  error
		wantErr bool
	}{
		{"missing KEK names the kid", "kbs:///default/image-kek/missing", decrypt.Options{Resources: client},
			[]string{"get KEK kbs:///default/image-kek/missing", "not found"}, nil, true},
		{"wrong KEK", "kbs:///default/image-kek/other", decrypt.Options{Resources: client},
			[]string{"wrong key", "kbs:///default/image-kek/other"}, decrypt.ErrWrongKey, true},
		{"KEK of the wrong size", "kbs:///default/image-kek/short", decrypt.Options{Resources: client},
			[]string{"kbs:///default/image-kek/short", "10 bytes"}, nil, true},
		{"no KBS configured", "kbs:///default/image-kek/1", decrypt.Options{},
			[]string{"no KBS configured", "kbs:///default/image-kek/1"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Encrypt with the right KEK, but name tt.kid in the packet.
			enc := encryptLayer(t, l, kek, "kbs:///default/image-kek/1")
			rewriteKid(t, &enc, tt.kid)
			_, err := decrypt.NewReader(context.Background(), bytes.NewReader(enc.blob), enc.desc, tt.opts)
			if err == nil {
				t.Fatal("NewReader succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
		})
	}
}

// rewriteKid changes the kid inside the attestation-agent packet.
func rewriteKid(t *testing.T, enc *encrypted, kid string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(enc.desc.Annotations[decrypt.AnnotationAttestationAgent])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["kid"] = kid
	raw, _ = json.Marshal(m)
	enc.desc.Annotations[decrypt.AnnotationAttestationAgent] = base64.StdEncoding.EncodeToString(raw)
}

// TestSeveralWrappedKeys: comma-joined packets are tried in turn.
func TestSeveralWrappedKeys(t *testing.T) {
	kek := randomKey(t)
	l := makeLayer(t, true, 1, 100)
	enc := encryptLayer(t, l, kek, "kbs:///default/k/good")
	good := enc.desc.Annotations[decrypt.AnnotationAttestationAgent]
	rewriteKid(t, &enc, "kbs:///default/k/missing")
	missing := enc.desc.Annotations[decrypt.AnnotationAttestationAgent]
	res := fakeResources{"kbs:///default/k/good": kek}
	tests := []struct {
		name, annotation string
		ok               bool
	}{
		{"missing then good", missing + "," + good, true},
		{"good then missing", good + "," + missing, true},
		{"only missing", missing + "," + missing, false},
		{"garbage then good", "!!!," + good, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc.desc.Annotations[decrypt.AnnotationAttestationAgent] = tt.annotation
			err := decryptAll(context.Background(), enc, l.diffID, decrypt.Options{Resources: res})
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok && !strings.Contains(err.Error(), "kbs:///default/k/missing") {
				t.Errorf("error %q does not name the kid", err)
			}
		})
	}
}

// encryptWithKey encrypts l and returns the ciphertext, the PLBCO JSON and
// the public options, so tests can forge what an attacker cannot.
func encryptWithKey(t *testing.T, l testLayer) (ct, plbco []byte, pub blockcipher.PublicLayerBlockCipherOptions) {
	t.Helper()
	e, err := decrypt.NewEncrypter(bytes.NewReader(l.blob), digest.FromBytes(l.blob))
	if err != nil {
		t.Fatal(err)
	}
	if ct, err = io.ReadAll(e); err != nil {
		t.Fatal(err)
	}
	plbco, pubJSON, err := e.PrivateOptions()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(pubJSON, &pub); err != nil {
		t.Fatal(err)
	}
	return ct, plbco, pub
}

func descFor(t *testing.T, l testLayer, ct []byte, kek, plbco []byte, pub blockcipher.PublicLayerBlockCipherOptions) ocispec.Descriptor {
	t.Helper()
	packet, err := decrypt.WrapKey(kek, "kbs:///default/k/1", plbco)
	if err != nil {
		t.Fatal(err)
	}
	pubJSON, _ := json.Marshal(pub)
	return ocispec.Descriptor{
		MediaType: decrypt.EncryptedMediaType(l.mediaType),
		Digest:    digest.FromBytes(ct),
		Size:      int64(len(ct)),
		Annotations: map[string]string{
			decrypt.AnnotationAttestationAgent: base64.StdEncoding.EncodeToString(packet),
			decrypt.AnnotationPubOpts:          base64.StdEncoding.EncodeToString(pubJSON),
		},
	}
}

func TestTampering(t *testing.T) {
	kek := randomKey(t)
	res := fakeResources{"kbs:///default/k/1": kek}
	l := makeLayer(t, true, 4, 16<<10) // larger than ocicrypt's 10 KiB hold-back
	ct, plbco, pub := encryptWithKey(t, l)
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal(plbco, &priv); err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 0x01; return c }
	tests := []struct {
		name string
		ct   []byte
		pub  blockcipher.PublicLayerBlockCipherOptions
		// descFromCT: the descriptor digest matches the modified blob (a
		// malicious manifest); otherwise it names the original blob.
		descFromCT bool
		wantIs     error
		want       string
	}{
		{"first byte, digest updated", flip(ct, 0), pub, true, decrypt.ErrHMACMismatch, "HMAC mismatch"},
		{"last byte, digest updated", flip(ct, len(ct)-1), pub, true, decrypt.ErrHMACMismatch, "HMAC mismatch"},
		{"middle byte, digest not updated", flip(ct, len(ct)/2), pub, false, decrypt.ErrHMACMismatch, "HMAC mismatch"},
		{"truncated", ct[:len(ct)-100], pub, true, decrypt.ErrHMACMismatch, "HMAC mismatch"},
		{"trailing bytes", append(bytes.Clone(ct), 0, 0, 0), pub, false, decrypt.ErrHMACMismatch, "HMAC mismatch"},
		// A valid ciphertext under a manifest naming another digest.
		{"blob digest mismatch", ct, pub, false, errdefs.ErrFailedPrecondition, "encrypted blob digest mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			desc := descFor(t, l, tt.ct, kek, plbco, tt.pub)
			if !tt.descFromCT {
				desc.Digest = digest.FromBytes(ct)
				desc.Size = int64(len(ct))
				if tt.name == "blob digest mismatch" {
					desc.Digest = digest.FromString("another blob")
				}
			}
			err := decryptAll(context.Background(), encrypted{blob: tt.ct, desc: desc}, l.diffID, decrypt.Options{Resources: res})
			if err == nil {
				t.Fatal("tampered layer decrypted without error")
			}
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
	// With the HMAC forged too (which needs the layer key: only the image's
	// owner could), the plaintext is no longer implied by the ciphertext
	// checks, and the diff ID from the config catches the change (for a
	// gzip layer, decompression or gzip's checksum may fail first).
	t.Run("forged HMAC fails the diff ID", func(t *testing.T) {
		for _, compressed := range []bool{false, true} {
			fl := makeLayer(t, compressed, 2, 4<<10)
			fct, fplbco, fpub := encryptWithKey(t, fl)
			var fpriv blockcipher.PrivateLayerBlockCipherOptions
			if err := json.Unmarshal(fplbco, &fpriv); err != nil {
				t.Fatal(err)
			}
			bad := flip(fct, 600) // inside the first file's data
			m := hmac.New(sha256.New, fpriv.SymmetricKey)
			m.Write(bad)
			fpub.Hmac = m.Sum(nil)
			desc := descFor(t, fl, bad, kek, fplbco, fpub)
			err := decryptAll(context.Background(), encrypted{blob: bad, desc: desc}, fl.diffID, decrypt.Options{Resources: res})
			var dm *layer.DigestMismatchError
			switch {
			case err == nil:
				t.Fatalf("compressed=%v: a forged HMAC over a changed ciphertext was accepted", compressed)
			case !compressed && (!errors.As(err, &dm) || dm.Kind != layer.KindDiffID):
				t.Fatalf("error %v is not a diff ID mismatch", err)
			}
		}
	})
	t.Run("plaintext released before the HMAC verdict differs", func(t *testing.T) {
		bad := flip(ct, 0)
		desc := descFor(t, l, bad, kek, plbco, pub)
		r, err := decrypt.NewReader(context.Background(), bytes.NewReader(bad), desc, decrypt.Options{Resources: res})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if !errors.Is(err, decrypt.ErrHMACMismatch) {
			t.Fatalf("read: %v", err)
		}
		if len(got) == 0 || digest.FromBytes(got) == r.PlainDigest() {
			t.Fatalf("released %d bytes with digest equal to the plain digest", len(got))
		}
		if err := r.Verify(); !errors.Is(err, decrypt.ErrHMACMismatch) {
			t.Fatalf("Verify = %v", err)
		}
	})
}

// TestVerifyDrains: Verify reads the rest of the stream before judging,
// as layer.Reader.Verify does, so a partial read of a tampered blob still
// reports the HMAC mismatch.
func TestVerifyDrains(t *testing.T) {
	kek := randomKey(t)
	l := makeLayer(t, false, 4, 16<<10)
	enc := encryptLayer(t, l, kek, "kbs:///default/k/1")
	res := fakeResources{"kbs:///default/k/1": kek}
	tamperedBlob := bytes.Clone(enc.blob)
	tamperedBlob[len(tamperedBlob)-1] ^= 0x80
	tampered := encrypted{blob: tamperedBlob, desc: enc.desc}
	tampered.desc.Digest = digest.FromBytes(tamperedBlob)
	tests := []struct {
		name   string
		enc    encrypted
		wantIs error
	}{
		{"intact", enc, nil},
		{"tampered", tampered, decrypt.ErrHMACMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := decrypt.NewReader(context.Background(), bytes.NewReader(tt.enc.blob), tt.enc.desc, decrypt.Options{Resources: res})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			for range 2 { // the verdict is remembered
				if err := r.Verify(); !errors.Is(err, tt.wantIs) || (tt.wantIs == nil) != (err == nil) {
					t.Fatalf("Verify = %v, want %v", err, tt.wantIs)
				}
			}
		})
	}
}

func TestNewReaderRejects(t *testing.T) {
	kek := randomKey(t)
	l := makeLayer(t, true, 1, 100)
	enc := encryptLayer(t, l, kek, "kbs:///default/k/1")
	res := fakeResources{"kbs:///default/k/1": kek}
	tests := []struct {
		name   string
		modify func(d *ocispec.Descriptor)
		want   string
	}{
		{"plain media type", func(d *ocispec.Descriptor) { d.MediaType = l.mediaType }, "not encrypted"},
		{"no pubopts", func(d *ocispec.Descriptor) { delete(d.Annotations, decrypt.AnnotationPubOpts) }, "pubopts"},
		{"bad pubopts", func(d *ocispec.Descriptor) { d.Annotations[decrypt.AnnotationPubOpts] = "e30=" }, "unsupported cipher"},
		{"no key annotations", func(d *ocispec.Descriptor) { delete(d.Annotations, decrypt.AnnotationAttestationAgent) }, "no supported wrapped key"},
		{"bad digest", func(d *ocispec.Descriptor) { d.Digest = "sha256:zz" }, "blob digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := enc.desc
			d.Annotations = map[string]string{}
			for k, v := range enc.desc.Annotations {
				d.Annotations[k] = v
			}
			tt.modify(&d)
			_, err := decrypt.NewReader(context.Background(), bytes.NewReader(enc.blob), d, decrypt.Options{Resources: res})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestJWERecipient(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := func(k any) []byte {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	privPEM := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	l := makeLayer(t, true, 3, 8<<10)
	ct, plbco, pub := encryptWithKey(t, l)
	wrapped, err := jwe.NewKeyWrapper().WrapKeys(&config.EncryptConfig{Parameters: map[string][][]byte{
		"pubkeys": {pubPEM(&rsaKey.PublicKey), pubPEM(&ecKey.PublicKey)},
	}}, plbco)
	if err != nil {
		t.Fatal(err)
	}
	pubJSON, _ := json.Marshal(pub)
	enc := encrypted{blob: ct, desc: ocispec.Descriptor{
		MediaType: decrypt.EncryptedMediaType(l.mediaType),
		Digest:    digest.FromBytes(ct),
		Size:      int64(len(ct)),
		Annotations: map[string]string{
			decrypt.AnnotationJWE:     base64.StdEncoding.EncodeToString(wrapped),
			decrypt.AnnotationPubOpts: base64.StdEncoding.EncodeToString(pubJSON),
		},
	}}
	tests := []struct {
		name string
		keys [][]byte
		ok   bool
	}{
		{"RSA private key", [][]byte{privPEM(rsaKey)}, true},
		{"EC private key", [][]byte{privPEM(ecKey)}, true},
		{"other key first, then the right one", [][]byte{privPEM(otherKey), privPEM(rsaKey)}, true},
		{"only another key", [][]byte{privPEM(otherKey)}, false},
		{"no keys", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := decryptAll(context.Background(), enc, l.diffID, decrypt.Options{PrivateKeys: tt.keys})
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok && !strings.Contains(err.Error(), decrypt.AnnotationJWE) {
				t.Errorf("error %q does not name the JWE annotation", err)
			}
		})
	}
}

// TestCapturedSkopeoJWEManifest parses the layer skopeo 1.9.3 encrypted for
// a JWE recipient: the annotations decode, the pubopts parse, and unwrapping
// with an unrelated key fails in the JWE step (not in parsing).
func TestCapturedSkopeoJWEManifest(t *testing.T) {
	var m ocispec.Manifest
	if err := json.Unmarshal(readVector(t, "ocicrypt-jwe-encrypted-manifest.json"), &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("%d layers", len(m.Layers))
	}
	desc := m.Layers[0]
	if !decrypt.IsEncrypted(desc.MediaType) || decrypt.PlainMediaType(desc.MediaType) != layer.MediaTypeOCILayerGzip {
		t.Fatalf("media type %s", desc.MediaType)
	}
	pub, err := decrypt.ParsePublicOptions(desc.Annotations[decrypt.AnnotationPubOpts])
	if err != nil {
		t.Fatal(err)
	}
	if string(pub.CipherType) != decrypt.CipherAES256CTRHMACSHA256 || len(pub.Hmac) != 32 {
		t.Fatalf("pubopts %+v", pub)
	}
	raw, err := base64.StdEncoding.DecodeString(desc.Annotations[decrypt.AnnotationJWE])
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Protected    string `json:"protected"`
		EncryptedKey string `json:"encrypted_key"`
		IV           string `json:"iv"`
		Ciphertext   string `json:"ciphertext"`
		Tag          string `json:"tag"`
	}
	if err := json.Unmarshal(raw, &j); err != nil || j.EncryptedKey == "" || j.Ciphertext == "" {
		t.Fatalf("JWE %s: %v", raw, err)
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	_, err = decrypt.UnwrapLayerKey(context.Background(), desc, decrypt.Options{PrivateKeys: [][]byte{pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}})
	if err == nil || !strings.Contains(err.Error(), "No suitable private key") {
		t.Fatalf("unwrap with an unrelated key: %v", err)
	}
}

func TestVectors(t *testing.T) {
	var v struct {
		Packet     json.RawMessage `json:"annotation_packet"`
		KEK        string          `json:"kek_hex"`
		PLBCO      string          `json:"decrypted_PrivateLayerBlockCipherOptions_json"`
		Annotation string
	}
	raw := readVector(t, "sample-key-unwrap-vector.json")
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(raw, &all); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(all["layer_annotation_value_(base64 std of packet JSON, as in manifest)"], &v.Annotation); err != nil {
		t.Fatal(err)
	}
	kek, err := hex.DecodeString(v.KEK)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("unwrap with KEK", func(t *testing.T) {
		p, err := decrypt.ParseAnnotationPacket(v.Packet)
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.UnwrapWithKEK(kek)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != v.PLBCO {
			t.Fatalf("PLBCO = %s, want %s", got, v.PLBCO)
		}
		priv, err := decrypt.ParsePrivateOptions(got)
		if err != nil {
			t.Fatal(err)
		}
		if priv.Digest != "sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7" {
			t.Fatalf("digest %s", priv.Digest)
		}
		bad := bytes.Clone(kek)
		bad[0] ^= 1
		if _, err := p.UnwrapWithKEK(bad); !errors.Is(err, decrypt.ErrWrongKey) {
			t.Fatalf("wrong KEK: %v", err)
		}
	})
	t.Run("unwrap through the layer annotation", func(t *testing.T) {
		desc := ocispec.Descriptor{Annotations: map[string]string{decrypt.AnnotationAttestationAgent: v.Annotation}}
		got, err := decrypt.UnwrapLayerKey(context.Background(), desc, decrypt.Options{Resources: fakeResources{"kbs:///default/key/1": kek}})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != v.PLBCO {
			t.Fatalf("PLBCO = %s", got)
		}
	})
	t.Run("packet bytes as coco_keyprovider writes them", func(t *testing.T) {
		p, err := decrypt.ParseAnnotationPacket(v.Packet)
		if err != nil {
			t.Fatal(err)
		}
		out, err := json.Marshal(decrypt.AnnotationPacket{Kid: p.Kid, WrappedData: p.WrappedData, IV: p.IV, WrapType: p.WrapType})
		if err != nil {
			t.Fatal(err)
		}
		if got := base64.StdEncoding.EncodeToString(out); got != v.Annotation {
			t.Fatalf("annotation\n got %s\nwant %s", got, v.Annotation)
		}
	})
	for _, f := range []struct {
		file, kid string
		unwrapErr string
	}{
		{"ocicrypt-rs-sample_kbc_annotation.json", "kbs:///default/key/1", ""},
		// Upstream's odd kid parses as a packet but is no resource URI.
		{"cdh-annotation-packet-v1.json", "kbs:///kbs:///default/key/1", "path segment"},
	} {
		t.Run(filepath.Base(f.file), func(t *testing.T) {
			p, err := decrypt.ParseAnnotationPacket(readVector(t, f.file))
			if err != nil {
				t.Fatal(err)
			}
			if p.Kid != f.kid || p.WrapType != decrypt.WrapTypeA256GCM || len(p.IV) != 12 || p.Version != "0.1.0" || p.Provider != "kbs" {
				t.Fatalf("packet %+v", p)
			}
			_, err = p.Unwrap(context.Background(), fakeResources{f.kid: kek})
			if f.unwrapErr == "" && err != nil {
				t.Fatal(err)
			}
			if f.unwrapErr != "" && (err == nil || !strings.Contains(err.Error(), f.unwrapErr)) {
				t.Fatalf("unwrap: %v, want %q", err, f.unwrapErr)
			}
		})
	}
}

func TestParseAnnotationPacket(t *testing.T) {
	iv12 := base64.StdEncoding.EncodeToString(make([]byte, 12))
	iv16 := base64.StdEncoding.EncodeToString(make([]byte, 16))
	tests := []struct {
		name, in, want string
	}{
		{"minimal v1", `{"kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"A256GCM"}`, ""},
		{"v2 fields", `{"version":"0.1.0","provider":"kbs","kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"` + iv16 + `","wrap_type":"A256CTR","provider_settings":{},"annotations":{}}`, ""},
		{"unknown fields ignored", `{"kid":"k","wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"A256GCM","x":1}`, ""},
		{"other provider needs no iv", `{"provider":"aliyun","kid":"k","wrapped_data":"AA=="}`, ""},
		{"no kid", `{"wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"A256GCM"}`, "no kid"},
		{"no wrapped_data", `{"kid":"k","iv":"` + iv12 + `","wrap_type":"A256GCM"}`, "no wrapped_data"},
		{"bad version", `{"version":"0.2.0","kid":"k","wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"A256GCM"}`, "version"},
		{"gcm iv size", `{"kid":"k","wrapped_data":"AA==","iv":"` + iv16 + `","wrap_type":"A256GCM"}`, "12-byte"},
		{"ctr iv size", `{"kid":"k","wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"A256CTR"}`, "16-byte"},
		{"no wrap_type", `{"kid":"k","wrapped_data":"AA==","iv":"` + iv12 + `"}`, "wrap_type"},
		{"unknown wrap_type", `{"kid":"k","wrapped_data":"AA==","iv":"` + iv12 + `","wrap_type":"RSA"}`, "unsupported wrap_type"},
		{"not JSON", `kid`, "parse annotation packet"},
		{"bad base64", `{"kid":"k","wrapped_data":"*","iv":"` + iv12 + `","wrap_type":"A256GCM"}`, "parse annotation packet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decrypt.ParseAnnotationPacket([]byte(tt.in))
			if tt.want == "" && err != nil {
				t.Fatal(err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestWrapKeyA256CTR checks the A256CTR unwrap path against a packet built
// by hand (coco_keyprovider never writes one, CDH accepts it).
func TestWrapKeyA256CTR(t *testing.T) {
	kek := randomKey(t)
	plbco := []byte(`{"symkey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}`)
	iv := make([]byte, 16)
	rand.Read(iv)
	wrapped := ctrXOR(t, kek, iv, plbco)
	p := &decrypt.AnnotationPacket{Kid: "kbs:///a/b/c", WrappedData: wrapped, IV: iv, WrapType: decrypt.WrapTypeA256CTR}
	got, err := p.UnwrapWithKEK(kek)
	if err != nil || !bytes.Equal(got, plbco) {
		t.Fatalf("unwrap: %q, %v", got, err)
	}
	if _, err := p.UnwrapWithKEK(randomKey(t)); !errors.Is(err, decrypt.ErrWrongKey) {
		t.Fatalf("wrong KEK: %v", err)
	}
}

func TestWrapKeyRejects(t *testing.T) {
	tests := []struct {
		name string
		kek  []byte
		kid  string
	}{
		{"short KEK", make([]byte, 16), "kbs:///a/b/c"},
		{"kid not a URI", make([]byte, 32), "/default/image-kek/123"},
		{"kid with 2 segments", make([]byte, 32), "kbs:///a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decrypt.WrapKey(tt.kek, tt.kid, []byte("{}")); err == nil {
				t.Fatal("WrapKey succeeded")
			}
		})
	}
}
