package sealed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// parseJWK decodes a P-256 EC JWK with go-jose, which checks the
// coordinate and d lengths and that the point is on the curve. Members
// other than the key's are ignored, as upstream's jose_jwk does.
func parseJWK(b []byte) (*jose.JSONWebKey, *ecdsa.PublicKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		return nil, nil, fmt.Errorf("key must be a P256 JWK (kty EC, crv P-256): %w", err)
	}
	var pub *ecdsa.PublicKey
	switch key := k.Key.(type) {
	case *ecdsa.PublicKey:
		pub = key
	case *ecdsa.PrivateKey:
		pub = &key.PublicKey
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("key must be P256 (kty EC, crv P-256), got a %T", k.Key)
	}
	return &k, pub, nil
}

// ParsePublicJWK reads a P-256 EC JWK, public or private (upstream accepts
// both as verification keys), and returns its public key.
func ParsePublicJWK(b []byte) (*ecdsa.PublicKey, error) {
	_, pub, err := parseJWK(b)
	return pub, err
}

// ParsePrivateJWK reads a P-256 EC private JWK ("d" present) and checks
// that d matches the public point (go-jose does not).
func ParsePrivateJWK(b []byte) (*ecdsa.PrivateKey, error) {
	k, pub, err := parseJWK(b)
	if err != nil {
		return nil, err
	}
	priv, ok := k.Key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("JWK has no private part (d)")
	}
	d, err := priv.Bytes()
	if err != nil {
		return nil, fmt.Errorf("JWK d: %w", err)
	}
	derived, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		return nil, fmt.Errorf("JWK d: %w", err)
	}
	if !derived.PublicKey.Equal(pub) {
		return nil, errors.New("JWK d does not match x and y")
	}
	return derived, nil
}

// PublicJWK encodes pub as a P-256 EC JWK (use "sig", alg ES256), the form
// to store as the kid resource.
func PublicJWK(pub *ecdsa.PublicKey, kid string) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("encode public key: not a P-256 key")
	}
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: AlgES256, Use: "sig"}.MarshalJSON()
}
