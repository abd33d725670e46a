package kbs

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/gowebpki/jcs"
)

// HashAlgorithm names a report-data hash as kbs-types spells it.
type HashAlgorithm string

// Hash algorithms cocoon implements. kbs-types also lists sm3, which Go's
// standard library lacks; cocoon neither offers nor accepts it.
const (
	SHA256 HashAlgorithm = "sha256"
	SHA384 HashAlgorithm = "sha384"
	SHA512 HashAlgorithm = "sha512"
)

// SupportedHashAlgorithms is what the client offers in Request extra-params.
var SupportedHashAlgorithms = []HashAlgorithm{SHA256, SHA384, SHA512}

// ParseHashAlgorithm accepts a name in any letter case.
func ParseHashAlgorithm(name string) (HashAlgorithm, error) {
	switch h := HashAlgorithm(strings.ToLower(name)); h {
	case SHA256, SHA384, SHA512:
		return h, nil
	default:
		return "", fmt.Errorf("unsupported hash algorithm %q", name)
	}
}

// Sum returns the digest of b.
func (h HashAlgorithm) Sum(b []byte) ([]byte, error) {
	switch h {
	case SHA256:
		s := sha256.Sum256(b)
		return s[:], nil
	case SHA384:
		s := sha512.Sum384(b)
		return s[:], nil
	case SHA512:
		s := sha512.Sum512(b)
		return s[:], nil
	default:
		return nil, fmt.Errorf("unsupported hash algorithm %q", string(h))
	}
}

// CanonicalJSON returns the RFC 8785 (JCS) form of v's JSON encoding.
func CanonicalJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal for canonicalisation: %w", err)
	}
	c, err := jcs.Transform(b)
	if err != nil {
		return nil, fmt.Errorf("canonicalise JSON: %w", err)
	}
	return c, nil
}

// RuntimeDataBinding returns the JCS bytes of the primary runtime data,
// {"tee-pubkey","nonce","additional-evidence"}, as both guest-components and
// Trustee build it.
func RuntimeDataBinding(pub TEEPubKey, nonce, additionalEvidence string) ([]byte, error) {
	return CanonicalJSON(map[string]any{
		"tee-pubkey":          pub,
		"nonce":               nonce,
		"additional-evidence": additionalEvidence,
	})
}

// ReportData returns H(JCS(primary runtime data)): the bytes the attester
// binds into its evidence and the verifier expects.
func ReportData(h HashAlgorithm, pub TEEPubKey, nonce, additionalEvidence string) ([]byte, error) {
	b, err := RuntimeDataBinding(pub, nonce, additionalEvidence)
	if err != nil {
		return nil, err
	}
	return h.Sum(b)
}
