package signature

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// capturedDigest is the image cosign v3.1.3 signed in
// testdata/cosign-v3-bundle.json.
const capturedDigest = digest.Digest("sha256:4139fbf61bf28e74edf99475ec0856e2c4fbb18f48bfd49b0e74080b7f01f903")

// readVector reads a file of testdata/ (see testdata/README.md).
func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newECKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// makeBundle builds a cosign-v3-shaped bundle over statement, signed by k.
func makeBundle(t testing.TB, k *ecdsa.PrivateKey, payloadType string, statement []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(dsse.PAE(payloadType, statement))
	sig, err := ecdsa.SignASN1(rand.Reader, k, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	b := map[string]any{
		"mediaType":            "application/vnd.dev.sigstore.bundle.v0.3+json",
		"verificationMaterial": map[string]any{"publicKey": map[string]string{"hint": "x"}},
		"dsseEnvelope": map[string]any{
			"payload":     base64.StdEncoding.EncodeToString(statement),
			"payloadType": payloadType,
			"signatures":  []map[string]string{{"sig": base64.StdEncoding.EncodeToString(sig)}},
		},
	}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func statementFor(d digest.Digest, predicate string) []byte {
	return []byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"` + d.Algorithm().String() + `":"` + d.Encoded() + `"},"annotations":{}}],"predicateType":"` + predicate + `","predicate":{}}`)
}

func TestVerifyBundle(t *testing.T) {
	captured := readVector(t, "cosign-v3-bundle.json")
	otherPEM := readVector(t, "cosign1.pub")
	other, err := parsePublicKey(otherPEM)
	if err != nil {
		t.Fatal(err)
	}
	k, pubPEM := newECKey(t)
	pub, err := parsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}

	// The captured statement, re-signed with a key the test owns: the
	// exact bytes cosign v3 signs.
	var cb sigstoreBundle
	if err := json.Unmarshal(captured, &cb); err != nil {
		t.Fatal(err)
	}
	capturedStatement, err := base64.StdEncoding.DecodeString(cb.DSSEEnvelope.Payload)
	if err != nil {
		t.Fatal(err)
	}
	resigned := makeBundle(t, k, inTotoPayloadType, capturedStatement)
	tampered := strings.Replace(string(resigned), `"payload":"`, `"payload":"eyJ`, 1)
	wrongDigest := digest.FromString("another image")

	tests := []struct {
		name    string
		bundle  []byte
		keys    []crypto.PublicKey
		digest  digest.Digest
		wantErr string
	}{
		{name: "captured bundle, wrong key", bundle: captured, keys: []crypto.PublicKey{other}, digest: capturedDigest, wantErr: "no signature verifies"},
		{name: "captured statement re-signed", bundle: resigned, keys: []crypto.PublicKey{pub}, digest: capturedDigest},
		{name: "second key matches", bundle: resigned, keys: []crypto.PublicKey{other, pub}, digest: capturedDigest},
		{name: "other manifest", bundle: resigned, keys: []crypto.PublicKey{pub}, digest: wrongDigest, wantErr: "does not name manifest"},
		{name: "tampered payload", bundle: []byte(tampered), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "no signature verifies"},
		{name: "attestation predicate", bundle: makeBundle(t, k, inTotoPayloadType, statementFor(capturedDigest, "https://spdx.dev/Document")), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "not a cosign image signature"},
		{name: "payload type", bundle: makeBundle(t, k, "text/plain", statementFor(capturedDigest, cosignSignPredicate)), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "not in-toto"},
		{name: "not a bundle", bundle: []byte(`{"mediaType":"application/json"}`), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "not a sigstore bundle"},
		{name: "no envelope", bundle: []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "no DSSE envelope"},
		{name: "garbage", bundle: []byte(`{`), keys: []crypto.PublicKey{pub}, digest: capturedDigest, wantErr: "parse bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkVerifyBundle(t, verifyBundle(tt.bundle, tt.keys, tt.digest), tt.wantErr)
		})
	}
}

// checkVerifyBundle fails t unless err is nil (wantErr "") or wraps
// errBundle and contains wantErr.
func checkVerifyBundle(t *testing.T, err error, wantErr string) {
	t.Helper()
	if wantErr == "" {
		if err != nil {
			t.Fatalf("verifyBundle: %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), wantErr) || !errors.Is(err, errBundle) {
		t.Fatalf("verifyBundle error = %v, want errBundle containing %q", err, wantErr)
	}
}

// The captured v3 artifacts agree with each other: the index names the
// bundle manifest, whose subject is the signed image and whose layer is a
// bundle over that image.
func TestCapturedV3Artifacts(t *testing.T) {
	var idx struct {
		Manifests []struct {
			Digest       string `json:"digest"`
			ArtifactType string `json:"artifactType"`
		} `json:"manifests"`
	}
	var man struct {
		Subject struct {
			Digest string `json:"digest"`
		} `json:"subject"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"layers"`
	}
	manBytes := readVector(t, "cosign-v3-bundle-manifest.json")
	if err := json.Unmarshal(readVector(t, "cosign-v3-fallback-index.json"), &idx); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(manBytes, &man); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 || !strings.HasPrefix(idx.Manifests[0].ArtifactType, bundleMediaTypePrefix) {
		t.Fatalf("fallback index entries = %+v", idx.Manifests)
	}
	if man.Subject.Digest != capturedDigest.String() {
		t.Fatalf("subject = %s, want %s", man.Subject.Digest, capturedDigest)
	}
	if len(man.Layers) != 1 || !strings.HasPrefix(man.Layers[0].MediaType, bundleMediaTypePrefix) {
		t.Fatalf("layers = %+v", man.Layers)
	}
	var b sigstoreBundle
	if err := json.Unmarshal(readVector(t, "cosign-v3-bundle.json"), &b); err != nil {
		t.Fatal(err)
	}
	st, err := base64.StdEncoding.DecodeString(b.DSSEEnvelope.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), capturedDigest.Encoded()) {
		t.Fatalf("statement %s does not name %s", st, capturedDigest)
	}
}

func TestParsePublicKey(t *testing.T) {
	_, good := newECKey(t)
	tests := []struct {
		name string
		pem  []byte
		ok   bool
	}{
		{"ecdsa", good, true},
		{"image-rs vector", readVector(t, "cosign1.pub"), true},
		{"not pem", []byte("hello"), false},
		{"bad der", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parsePublicKey(tt.pem)
			if (err == nil) != tt.ok {
				t.Fatalf("parsePublicKey err = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func FuzzVerifyBundle(f *testing.F) {
	k, pubPEM := newECKey(f)
	pub, err := parsePublicKey(pubPEM)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(makeBundle(f, k, inTotoPayloadType, statementFor(capturedDigest, cosignSignPredicate)))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := verifyBundle(data, []crypto.PublicKey{pub}, capturedDigest)
		if err != nil && !errors.Is(err, errBundle) {
			t.Fatalf("error %v does not wrap errBundle", err)
		}
		if err == nil && !strings.Contains(string(data), "dsseEnvelope") {
			t.Fatalf("accepted a bundle without an envelope: %q", data)
		}
	})
}
