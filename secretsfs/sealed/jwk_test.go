package sealed_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// TestPublicJWKMembers: the kid resource PublicJWK writes carries the
// members upstream's jose_jwk reads, with fixed-length coordinates, and
// parses back to the same key.
func TestPublicJWKMembers(t *testing.T) {
	for range 50 { // enough keys that some coordinates have leading zeros
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sealed.PublicJWK(&k.PublicKey, "kbs:///default/signing-key/1")
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		pt, _ := k.PublicKey.Bytes()
		want := map[string]string{
			"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "kbs:///default/signing-key/1",
			"x": base64.RawURLEncoding.EncodeToString(pt[1:33]),
			"y": base64.RawURLEncoding.EncodeToString(pt[33:]),
		}
		if len(m) != len(want) {
			t.Fatalf("members %v, want %v", m, want)
		}
		for name, v := range want {
			if m[name] != v {
				t.Fatalf("%s = %q, want %q (%s)", name, m[name], v, b)
			}
		}
		pub, err := sealed.ParsePublicJWK(b)
		if err != nil || !pub.Equal(&k.PublicKey) {
			t.Fatalf("parse back: %v", err)
		}
	}
	if b, err := sealed.PublicJWK(&k384(t).PublicKey, ""); err == nil {
		t.Fatalf("P-384 key encoded: %s", b)
	}
}

func k384(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestParsePublicJWK covers what decoding through go-jose could change:
// extra members stay ignored, a private JWK still verifies, and other key
// types and curves are refused naming P256.
func TestParsePublicJWK(t *testing.T) {
	priv := readVector(t, "gc-test-key.json")
	var m map[string]any
	if err := json.Unmarshal(priv, &m); err != nil {
		t.Fatal(err)
	}
	edit := func(changes map[string]any) []byte {
		c := map[string]any{}
		for a, b := range m {
			c[a] = b
		}
		for a, b := range changes {
			if b == nil {
				delete(c, a)
			} else {
				c[a] = b
			}
		}
		b, _ := json.Marshal(c)
		return b
	}
	p384, _ := sealed.PublicJWK(&k384(t).PublicKey, "")
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"private JWK", priv, true},
		{"public part", edit(map[string]any{"d": nil}), true},
		{"extra members", edit(map[string]any{"d": nil, "key_ops": []string{"verify"}, "ext": true, "cocoon": 1}), true},
		{"no alg or use", edit(map[string]any{"d": nil, "alg": nil, "use": nil}), true},
		{"RSA", []byte(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`), false},
		{"oct", []byte(`{"kty":"oct","k":"AAAA"}`), false},
		{"OKP", []byte(`{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`), false},
		{"P-384", p384, false},
		{"no kty", edit(map[string]any{"kty": nil, "d": nil}), false},
		{"short x", edit(map[string]any{"d": nil, "x": "AAAA"}), false},
		{"off curve", edit(map[string]any{"d": nil, "y": m["x"]}), false},
		{"not JSON", []byte("{"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := sealed.ParsePublicJWK(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "P256") {
				t.Fatalf("error %q does not name P256", err)
			}
			if err == nil && pub.Curve != elliptic.P256() {
				t.Fatalf("curve %s", pub.Curve.Params().Name)
			}
		})
	}
}
