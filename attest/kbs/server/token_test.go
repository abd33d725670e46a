package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// signWith makes a compact JWS over claims with an arbitrary key, algorithm
// and options: the forgeries verify must refuse.
func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, opts *jose.SignerOptions, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// nonCanonical returns s with the unused low bits of its last base64url
// character set, so it decodes to the same bytes.
func nonCanonical(t *testing.T, s string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(s)%4 == 0 {
		t.Fatalf("%q has no unused bits", s)
	}
	last := strings.IndexByte(alphabet, s[len(s)-1])
	out := s[:len(s)-1] + string(alphabet[last|1])
	a, errA := base64.RawURLEncoding.DecodeString(s)
	b, errB := base64.RawURLEncoding.DecodeString(out)
	if errA != nil || errB != nil || string(a) != string(b) || out == s {
		t.Fatalf("no non-canonical twin of %q", s)
	}
	return out
}

// TestTokenHeader: the protected header names ES256 and JWT and embeds this
// KBS's public key as a JWK carrying "alg":"ES256", as Trustee's EAR broker
// writes it.
func TestTokenHeader(t *testing.T) {
	s, err := newTokenSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.sign(map[string]any{"exp": time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	hb, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct {
		Alg string          `json:"alg"`
		Typ string          `json:"typ"`
		JWK json.RawMessage `json:"jwk"`
	}
	if err := json.Unmarshal(hb, &hdr); err != nil {
		t.Fatal(err)
	}
	if hdr.Alg != "ES256" || hdr.Typ != "JWT" {
		t.Fatalf("header %s", hb)
	}
	var jwk struct{ Kty, Crv, Alg, X, Y, D string }
	if err := json.Unmarshal(hdr.JWK, &jwk); err != nil {
		t.Fatal(err)
	}
	pub, _ := s.key.PublicKey.Bytes()
	if jwk.Kty != "EC" || jwk.Crv != "P-256" || jwk.Alg != "ES256" || jwk.D != "" ||
		jwk.X != base64.RawURLEncoding.EncodeToString(pub[1:33]) || jwk.Y != base64.RawURLEncoding.EncodeToString(pub[33:]) {
		t.Fatalf("embedded jwk %s does not name the signing key", hdr.JWK)
	}
}

// TestTokenForgeriesRefused: tokens this KBS did not sign with its key, or
// signed with headers it does not understand, are refused.
func TestTokenForgeriesRefused(t *testing.T) {
	s, err := newTokenSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	// Pad the claims so the encoded payload has unused bits to spell
	// differently.
	var claims map[string]any
	var good string
	for pad := ""; ; pad += "x" {
		claims = map[string]any{"exp": now.Add(time.Hour).Unix(), "iss": tokenIssuer, "pad": pad}
		if good, err = s.sign(claims); err != nil {
			t.Fatal(err)
		}
		if len(strings.Split(good, ".")[1])%4 != 0 {
			break
		}
	}
	if _, err := s.verify(good, now); err != nil {
		t.Fatalf("own token refused: %v", err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubBytes, _ := s.key.PublicKey.Bytes()
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding.EncodeToString
	for name, tok := range map[string]string{
		"alg none": enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".",
		// A token signed by another key that embeds its own JWK: the
		// header's key is never trusted.
		"other key with its jwk": signWith(t, jose.ES256, other, &jose.SignerOptions{EmbedJWK: true}, claims),
		// HMAC keyed with the public key's bytes (algorithm confusion).
		"HS256 with public key": signWith(t, jose.HS256, pubBytes, nil, claims),
		// Signed by this KBS's key, but marking a header critical that
		// nothing here implements.
		"critical header": signWith(t, jose.ES256, s.key,
			(&jose.SignerOptions{}).WithCritical("cocoon-unknown").WithHeader("cocoon-unknown", true), claims),
		"header swapped":       enc([]byte(`{"alg":"ES256"}`)) + "." + parts[1] + "." + parts[2],
		"line break":           parts[0] + ".\n" + parts[1] + "." + parts[2],
		"non-canonical base64": parts[0] + "." + nonCanonical(t, parts[1]) + "." + parts[2],
		"JSON form":            `{"protected":"` + parts[0] + `","payload":"` + parts[1] + `","signature":"` + parts[2] + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := s.verify(tok, now); err == nil {
				t.Fatalf("accepted %q", tok)
			}
		})
	}
	// Control for "critical header": the same key and claims without the
	// crit header verify, so that refusal is the header check's.
	t.Run("same key without crit", func(t *testing.T) {
		tok := signWith(t, jose.ES256, s.key, nil, claims)
		if _, err := s.verify(tok, now); err != nil {
			t.Fatalf("same key without crit refused: %v", err)
		}
	})
}
