package signature

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// signPAE signs the DSSE PAE of (payloadType, payload) the way cosign does
// for each key type: ASN.1 ECDSA over the curve's hash, RSA PKCS#1 v1.5
// over SHA-256, pure ed25519.
func signPAE(t *testing.T, key crypto.Signer, payloadType string, payload []byte) []byte {
	t.Helper()
	pae := dsse.PAE(payloadType, payload)
	var sig []byte
	var err error
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		var digest []byte
		switch k.Curve {
		case elliptic.P384():
			s := sha512.Sum384(pae)
			digest = s[:]
		default:
			s := sha256.Sum256(pae)
			digest = s[:]
		}
		sig, err = ecdsa.SignASN1(rand.Reader, k, digest)
	case *rsa.PrivateKey:
		s := sha256.Sum256(pae)
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, s[:])
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, pae)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// envelopeBundle wraps an envelope in a cosign-v3-shaped bundle.
func envelopeBundle(t *testing.T, env dsse.Envelope) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"mediaType":    "application/vnd.dev.sigstore.bundle.v0.3+json",
		"dsseEnvelope": env,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVerifyBundleEnvelopes covers the DSSE cases the move to
// go-securesystemslib's envelope verifier and sigstore's verifiers could
// change: several signatures, key IDs, encodings and key types.
func TestVerifyBundleEnvelopes(t *testing.T) {
	statement := statementFor(capturedDigest, cosignSignPredicate)
	std := base64.StdEncoding.EncodeToString
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384Key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := signPAE(t, ecKey, inTotoPayloadType, statement)
	bad := signPAE(t, stranger, inTotoPayloadType, statement)
	env := func(payload string, sigs ...dsse.Signature) dsse.Envelope {
		return dsse.Envelope{PayloadType: inTotoPayloadType, Payload: payload, Signatures: sigs}
	}
	ecOnly := []crypto.PublicKey{&ecKey.PublicKey}

	tests := []struct {
		name    string
		bundle  []byte
		keys    []crypto.PublicKey
		wantErr string
	}{
		{name: "one signature", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(good)})), keys: ecOnly},
		{name: "stranger then good", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(bad)}, dsse.Signature{Sig: std(good)})), keys: ecOnly},
		{name: "undecodable then good", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: "!!not base64!!"}, dsse.Signature{Sig: std(good)})), keys: ecOnly},
		{name: "two strangers", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(bad)}, dsse.Signature{Sig: std(bad)})), keys: ecOnly, wantErr: "no signature verifies"},
		{name: "no signatures", bundle: envelopeBundle(t, env(std(statement))), keys: ecOnly, wantErr: "no signature verifies"},
		{name: "key id that matches nothing", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{KeyID: "SHA256:someone-else", Sig: std(good)})), keys: ecOnly},
		{name: "URL-safe payload", bundle: envelopeBundle(t, env(base64.URLEncoding.EncodeToString(statement), dsse.Signature{Sig: base64.URLEncoding.EncodeToString(good)})), keys: ecOnly},
		// DSSE's Base64 is RFC 4648 with padding (standard or URL-safe);
		// cosign writes padded standard base64. The hand-written decoder
		// this replaced also took unpadded URL-safe text.
		{name: "unpadded payload", bundle: envelopeBundle(t, env(strings.TrimRight(std(statement), "="), dsse.Signature{Sig: std(good)})), keys: ecOnly, wantErr: "no signature verifies"},
		{name: "signed as another payload type", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(signPAE(t, ecKey, "text/plain", statement))})), keys: ecOnly, wantErr: "no signature verifies"},
		{name: "no keys", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(good)})), keys: nil, wantErr: "no signature verifies"},
		{name: "P-384 with SHA-384", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(signPAE(t, p384Key, inTotoPayloadType, statement))})), keys: []crypto.PublicKey{&p384Key.PublicKey}},
		{name: "RSA 2048", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(signPAE(t, rsaKey, inTotoPayloadType, statement))})), keys: []crypto.PublicKey{&rsaKey.PublicKey}},
		{name: "ed25519", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(signPAE(t, edKey, inTotoPayloadType, statement))})), keys: []crypto.PublicKey{edKey.Public()}},
		{name: "ed25519 signature, EC key", bundle: envelopeBundle(t, env(std(statement), dsse.Signature{Sig: std(signPAE(t, edKey, inTotoPayloadType, statement))})), keys: ecOnly, wantErr: "no signature verifies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkVerifyBundle(t, verifyBundle(tt.bundle, tt.keys, capturedDigest), tt.wantErr)
		})
	}
}
