package kbs

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ProtocolVersion is the only RCAR protocol version Trustee accepts.
const ProtocolVersion = "0.4.0"

// PathPrefix is the URL path every KBS endpoint lives under.
const PathPrefix = "/kbs/v0"

// SessionCookie names the cookie that carries the RCAR session id.
const SessionCookie = "kbs-session-id"

// Keys of the extra-params objects.
const (
	SupportedHashAlgorithmsKey = "supported-hash-algorithms"
	SelectedHashAlgorithmKey   = "selected-hash-algorithm"
)

// ErrorTypePrefix prefixes the "type" member of every KBS error body.
const ErrorTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// maxMessageSize bounds every protocol message we parse: evidence with a
// TDX event log stays well below it.
const maxMessageSize = 32 << 20

// Request is the body of POST /auth.
type Request struct {
	Version     string          `json:"version"`
	TEE         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge is the response of POST /auth. ExtraParams is the empty JSON
// string for every TEE but IBM SE, where it is an object naming the selected
// hash algorithm.
type Challenge struct {
	Nonce       string          `json:"nonce"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// InitData carries the init-data document in an Attestation.
type InitData struct {
	Format string `json:"format"`
	Body   string `json:"body"`
}

// RuntimeData binds the session nonce and the TEE public key.
type RuntimeData struct {
	Nonce     string    `json:"nonce"`
	TEEPubKey TEEPubKey `json:"tee-pubkey"`
}

// CompositeEvidence is the tee-evidence member of an Attestation.
// AdditionalEvidence is a JSON string holding {tee: evidence} of extra
// devices, or "" when there are none.
type CompositeEvidence struct {
	PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
	AdditionalEvidence string          `json:"additional_evidence"`
}

// Attestation is the body of POST /attest. Member order and spelling follow
// kbs-types: kebab-case at the top, snake_case inside tee-evidence.
type Attestation struct {
	InitData    *InitData         `json:"init-data"`
	RuntimeData RuntimeData       `json:"runtime-data"`
	TEEEvidence CompositeEvidence `json:"tee-evidence"`
}

// AttestationResponse is the body of a successful POST /attest.
type AttestationResponse struct {
	Token string `json:"token"`
}

// ErrorInformation is the JSON body of every KBS error response.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// Variant returns the error variant name at the end of Type, e.g. "PolicyDeny".
func (e ErrorInformation) Variant() string {
	if len(e.Type) > len(ErrorTypePrefix) && e.Type[:len(ErrorTypePrefix)] == ErrorTypePrefix {
		return e.Type[len(ErrorTypePrefix):]
	}
	return e.Type
}

// ParseRequest decodes and checks an /auth body. It does not check the
// version: the server reports a version mismatch with its own message.
func ParseRequest(b []byte) (*Request, error) {
	var r Request
	if err := unmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("decode Request: %w", err)
	}
	if r.TEE == "" {
		return nil, errors.New("decode Request: missing tee")
	}
	return &r, nil
}

// ParseChallenge decodes an /auth response.
func ParseChallenge(b []byte) (*Challenge, error) {
	var c Challenge
	if err := unmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("decode Challenge: %w", err)
	}
	if c.Nonce == "" {
		return nil, errors.New("decode Challenge: empty nonce")
	}
	return &c, nil
}

// SelectedHashAlgorithm applies the client rule: the challenge's
// extra-params["selected-hash-algorithm"] (lower-cased) when present,
// sha384 otherwise.
func (c *Challenge) SelectedHashAlgorithm() (HashAlgorithm, error) {
	if len(c.ExtraParams) == 0 || c.ExtraParams[0] != '{' {
		return SHA384, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c.ExtraParams, &m); err != nil {
		return "", fmt.Errorf("decode challenge extra-params: %w", err)
	}
	raw, ok := m[SelectedHashAlgorithmKey]
	if !ok {
		return SHA384, nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return "", fmt.Errorf("challenge %s is not a string: %w", SelectedHashAlgorithmKey, err)
	}
	return ParseHashAlgorithm(name)
}

// ParseAttestation decodes and checks an /attest body.
func ParseAttestation(b []byte) (*Attestation, error) {
	var a Attestation
	if err := unmarshalStrict(b, &a); err != nil {
		return nil, fmt.Errorf("decode Attestation: %w", err)
	}
	if a.RuntimeData.Nonce == "" {
		return nil, errors.New("decode Attestation: empty runtime-data nonce")
	}
	if err := a.RuntimeData.TEEPubKey.Validate(); err != nil {
		return nil, fmt.Errorf("decode Attestation: tee-pubkey: %w", err)
	}
	if len(a.TEEEvidence.PrimaryEvidence) == 0 || string(a.TEEEvidence.PrimaryEvidence) == "null" {
		return nil, errors.New("decode Attestation: missing primary_evidence")
	}
	return &a, nil
}

// ParseErrorInformation decodes a KBS error body.
func ParseErrorInformation(b []byte) (*ErrorInformation, error) {
	var e ErrorInformation
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode KBS error body: %w", err)
	}
	if e.Type == "" {
		return nil, errors.New("decode KBS error body: missing type")
	}
	return &e, nil
}

// unmarshalStrict decodes one JSON value and rejects trailing data.
func unmarshalStrict(b []byte, v any) error {
	if len(b) > maxMessageSize {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), maxMessageSize)
	}
	return json.Unmarshal(b, v)
}
