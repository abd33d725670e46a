package sealed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// jwk is the subset of an EC JWK (RFC 7518 section 6.2) a signing key uses.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d,omitempty"`
	Kid string `json:"kid,omitempty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
}

const p256Size = 32

func decodeCoord(name, s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("JWK %s: %w", name, err)
	}
	if len(b) != p256Size {
		return nil, fmt.Errorf("JWK %s is %d bytes, want %d", name, len(b), p256Size)
	}
	return b, nil
}

func parseJWK(b []byte) (*jwk, *ecdsa.PublicKey, error) {
	var k jwk
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, nil, fmt.Errorf("decode JWK: %w", err)
	}
	if k.Kty != "EC" || k.Crv != "P-256" {
		return nil, nil, fmt.Errorf("key must be P256 (kty EC, crv P-256), got kty %q crv %q", k.Kty, k.Crv)
	}
	x, err := decodeCoord("x", k.X)
	if err != nil {
		return nil, nil, err
	}
	y, err := decodeCoord("y", k.Y)
	if err != nil {
		return nil, nil, err
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, nil, fmt.Errorf("JWK point: %w", err)
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
// that d matches the public point.
func ParsePrivateJWK(b []byte) (*ecdsa.PrivateKey, error) {
	k, pub, err := parseJWK(b)
	if err != nil {
		return nil, err
	}
	if k.D == "" {
		return nil, errors.New("JWK has no private part (d)")
	}
	d, err := decodeCoord("d", k.D)
	if err != nil {
		return nil, err
	}
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		return nil, fmt.Errorf("JWK d: %w", err)
	}
	got, err := priv.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("JWK d: %w", err)
	}
	want, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("JWK point: %w", err)
	}
	if !bytes.Equal(got, want) {
		return nil, errors.New("JWK d does not match x and y")
	}
	return priv, nil
}

// PublicJWK encodes pub as a P-256 EC JWK, the form to store as the kid
// resource.
func PublicJWK(pub *ecdsa.PublicKey, kid string) ([]byte, error) {
	b, err := pub.Bytes()
	if err != nil || len(b) != 1+2*p256Size {
		return nil, fmt.Errorf("encode public key: not a P-256 point (%v)", err)
	}
	return json.Marshal(jwk{
		Kty: "EC", Crv: "P-256", Alg: AlgES256, Use: "sig", Kid: kid,
		X: base64.RawURLEncoding.EncodeToString(b[1 : 1+p256Size]),
		Y: base64.RawURLEncoding.EncodeToString(b[1+p256Size:]),
	})
}
