package sealed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// Prefix starts every sealed secret.
const Prefix = "sealed."

// AlgES256 is the only JWS algorithm sealed secrets use.
const AlgES256 = "ES256"

// signatureSize is an ES256 JWS signature: r||s, 32 bytes each.
const signatureSize = 64

// MaxSize bounds a sealed secret string. Kubernetes secrets are at most
// 1 MiB; anything bigger is refused before decoding.
const MaxSize = 4 << 20

// Part names the piece of a sealed secret an Error is about.
type Part string

// The parts errors name.
const (
	PartHeader    Part = "header"
	PartPayload   Part = "payload"
	PartSignature Part = "signature"
	PartKidFetch  Part = "kid fetch"
	PartKey       Part = "verification key"
	PartProvider  Part = "provider"
)

// Error reports a sealed secret that could not be parsed, verified or
// resolved. It never carries plaintext or key material.
type Error struct {
	Part Part
	Err  error
}

func (e *Error) Error() string { return "sealed secret " + string(e.Part) + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

func partErr(p Part, format string, args ...any) error {
	return &Error{Part: p, Err: fmt.Errorf(format, args...)}
}

// Sentinels callers test with errors.Is.
var (
	// ErrUnsigned: an unsigned legacy sealed secret while verification is on.
	ErrUnsigned = errors.New("unsigned (legacy) sealed secret refused; set skip_sealed_secret_verification to accept it")
	// ErrBadSignature: the signature does not verify with the kid's key.
	ErrBadSignature = errors.New("ES256 signature does not verify")
	// ErrNotSealed: the input does not start with "sealed.".
	ErrNotSealed = errors.New(`not a sealed secret (no "sealed." prefix)`)
)

// Header is the JWS protected header. Upstream emits exactly
// {"b64":true,"alg":"ES256","kid":"..."}; the field order here keeps that.
type Header struct {
	B64 *bool  `json:"b64,omitempty"`
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	// Crit lists extensions the signer requires be understood; cocoon
	// understands none, so a non-empty list is refused.
	Crit []string `json:"crit,omitempty"`
}

// JWS is a parsed, not yet verified, sealed secret.
type JWS struct {
	Header    Header
	Payload   []byte // decoded payload JSON
	Signature []byte // r||s

	signingInput string // header_b64 + "." + payload_b64, as received
}

// IsSealed reports whether b starts with the sealed-secret prefix.
func IsSealed(b []byte) bool { return bytes.HasPrefix(b, []byte(Prefix)) }

// Parse reads a signed sealed secret without verifying it. All leading
// "sealed." prefixes are stripped, as upstream does. Errors are *Error
// naming the header, payload or signature part.
func Parse(s string) (*JWS, error) {
	if len(s) > MaxSize {
		return nil, partErr(PartHeader, "sealed secret is %d bytes, more than %d", len(s), MaxSize)
	}
	if !strings.HasPrefix(s, Prefix) {
		return nil, &Error{Part: PartHeader, Err: ErrNotSealed}
	}
	rest := s
	for strings.HasPrefix(rest, Prefix) {
		rest = rest[len(Prefix):]
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return nil, partErr(PartHeader, "not a compact JWS: want 3 dot-separated parts after the prefix, got %d", len(parts))
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || !json.Valid(hb) {
		if legacyPayload(parts[1]) {
			return nil, &Error{Part: PartHeader, Err: ErrUnsigned}
		}
		if err == nil {
			err = errors.New("not JSON")
		}
		return nil, partErr(PartHeader, "decode protected header: %w", err)
	}
	var h Header
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, partErr(PartHeader, "decode protected header: %w", err)
	}
	switch {
	case h.Kid == "":
		return nil, partErr(PartHeader, "could not find kid")
	case h.Alg == "":
		return nil, partErr(PartHeader, "could not get algorithm")
	case h.Alg != AlgES256:
		return nil, partErr(PartHeader, "JWS algorithm must be ES256, got %q", h.Alg)
	case h.B64 != nil && !*h.B64:
		return nil, partErr(PartHeader, "unencoded payloads (b64=false) are not supported")
	case len(h.Crit) > 0:
		return nil, partErr(PartHeader, "critical header extensions %q are not understood", h.Crit)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, partErr(PartPayload, "decode base64url: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, partErr(PartSignature, "decode base64url: %w", err)
	}
	if len(sig) != signatureSize {
		return nil, partErr(PartSignature, "ES256 signature is %d bytes, want %d", len(sig), signatureSize)
	}
	return &JWS{Header: h, Payload: payload, Signature: sig, signingInput: parts[0] + "." + parts[1]}, nil
}

// legacyPayload reports whether p looks like the payload of an unsigned
// legacy sealed secret: base64url of a JSON object.
func legacyPayload(p string) bool {
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return false
	}
	var m map[string]json.RawMessage
	return json.Unmarshal(b, &m) == nil
}

// Verify checks the ES256 signature over the header and payload exactly as
// received.
func (j *JWS) Verify(pub *ecdsa.PublicKey) error {
	if pub == nil {
		return partErr(PartKey, "no verification key")
	}
	digest := sha256.Sum256([]byte(j.signingInput))
	r := new(big.Int).SetBytes(j.Signature[:signatureSize/2])
	s := new(big.Int).SetBytes(j.Signature[signatureSize/2:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return &Error{Part: PartSignature, Err: ErrBadSignature}
	}
	return nil
}

// Sign serialises s and signs it with key under kid, producing the string
// upstream's secret CLI produces: header {"b64":true,"alg":"ES256","kid":kid}.
//
// The JWS is assembled by hand, not by go-jose, because its bytes are an
// interop requirement: a secret sealed here must be the one guest-components'
// Secret::to_signed_base64_string seals (jose_jws Protected serialised by
// serde: b64, alg, kid in that order, no "crit"), so that cocoon and the
// upstream tooling produce and compare the same sealed strings. go-jose
// writes protected members sorted (alg, b64, kid) and pairs b64 with
// "crit":["b64"] (RFC 7797). TestKataVectorsDecode re-seals kata's real
// sealed secrets and checks header and payload byte for byte.
func Sign(s *Secret, key *ecdsa.PrivateKey, kid string) (string, error) {
	if kid == "" {
		return "", partErr(PartHeader, "empty kid")
	}
	if key == nil || key.Curve == nil || key.Curve.Params().Name != "P-256" {
		return "", partErr(PartKey, "signing key must be an EC P-256 private key")
	}
	payload, err := marshal(s)
	if err != nil {
		return "", partErr(PartPayload, "encode: %w", err)
	}
	b64 := true
	hdr, err := marshal(Header{B64: &b64, Alg: AlgES256, Kid: kid})
	if err != nil {
		return "", partErr(PartHeader, "encode: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, sv, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", partErr(PartSignature, "sign: %w", err)
	}
	sig := make([]byte, signatureSize)
	r.FillBytes(sig[:signatureSize/2])
	sv.FillBytes(sig[signatureSize/2:])
	return Prefix + input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// parseUnsigned reads a sealed secret without verification, as upstream
// does when skip_sealed_secret_verification is set: exactly four
// dot-separated parts, the third being the payload.
func parseUnsigned(s string) ([]byte, error) {
	if len(s) > MaxSize {
		return nil, partErr(PartHeader, "sealed secret is %d bytes, more than %d", len(s), MaxSize)
	}
	if !strings.HasPrefix(s, Prefix) {
		return nil, &Error{Part: PartHeader, Err: ErrNotSealed}
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return nil, partErr(PartHeader, "malformed sealed secret: want 4 dot-separated parts, got %d", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, partErr(PartPayload, "decode base64url: %w", err)
	}
	return b, nil
}
