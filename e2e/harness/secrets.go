package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
)

// NewSigningJWK returns the private and public JWK of a new P-256 key with
// the given kid, as an operator makes one for signing sealed secrets (the
// public one goes into the KBS at kid).
func NewSigningJWK(kid string) (private, public []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	raw, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, nil, err
	}
	d, err := k.Bytes()
	if err != nil {
		return nil, nil, err
	}
	jwk := map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid, "x": b64(raw[1:33]), "y": b64(raw[33:])}
	if public, err = json.Marshal(jwk); err != nil {
		return nil, nil, err
	}
	jwk["d"] = b64(d)
	private, err = json.Marshal(jwk)
	return private, public, err
}
