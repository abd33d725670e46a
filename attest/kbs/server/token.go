package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// EAR constants as the CoCo attestation service writes them.
const (
	EATProfile   = "tag:github.com,2024:confidential-containers/Trustee"
	tokenIssuer  = "CoCo-Attestation-Service"
	earDeveloper = "https://confidentialcontainers.org"
	earBuild     = "cocoon-kbs 0.1.0"
	annotatedKey = "ear.veraison.annotated-evidence"
)

// tokenSigner issues and verifies the ES256 EAR tokens of this KBS.
type tokenSigner struct {
	key    *ecdsa.PrivateKey
	header string // base64url of the JOSE header, with the signer's jwk
}

func newTokenSigner(key *ecdsa.PrivateKey) (*tokenSigner, error) {
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate token signing key: %w", err)
		}
	}
	if key.Curve != elliptic.P256() {
		return nil, errors.New("token signing key must be P-256 (ES256)")
	}
	pub, err := key.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode token signing key: %w", err)
	}
	h, err := json.Marshal(map[string]any{
		"alg": "ES256",
		"typ": "JWT",
		"jwk": map[string]string{
			"kty": "EC", "crv": "P-256", "alg": "ES256",
			"x": base64.RawURLEncoding.EncodeToString(pub[1:33]),
			"y": base64.RawURLEncoding.EncodeToString(pub[33:]),
		},
	})
	if err != nil {
		return nil, err
	}
	return &tokenSigner{key: key, header: base64.RawURLEncoding.EncodeToString(h)}, nil
}

func (t *tokenSigner) sign(claims map[string]any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode token claims: %w", err)
	}
	input := t.header + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, t.key, digest[:])
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verify checks the signature against this KBS's key and the validity
// window, and returns the claims (numbers kept exact).
func (t *tokenSigner) verify(token string, now time.Time) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("token is not a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("decode token header: %w", err)
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return nil, fmt.Errorf("decode token header: %w", err)
	}
	if hdr.Alg != "ES256" {
		return nil, fmt.Errorf("token alg %q, want ES256", hdr.Alg)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("token signature is not 64 bytes of base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(&t.key.PublicKey, digest[:], r, s) {
		return nil, errors.New("token signature does not verify with this KBS's key")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("decode token claims: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return nil, fmt.Errorf("decode token claims: %w", err)
	}
	times, err := kbs.ParseTokenTimes(token)
	if err != nil {
		return nil, err
	}
	if times.Expiry.IsZero() {
		return nil, errors.New("token has no exp")
	}
	if !times.ValidAt(now) {
		return nil, errors.New("token expired or not yet valid")
	}
	return claims, nil
}

// earClaims builds the EAR claims set the CoCo AS issues for one CPU TEE.
// Like Trustee's transform_claims, report_data/runtime_data_claims and
// init_data/init_data_claims are lifted out of the verifier's claims only
// when the verifier produced report_data and init_data respectively.
//
// The appraisal (status and trust vector) is computed from the same
// verified claims and the init-data binding; see appraise.
func earClaims(tee string, claims attest.Claims, runtimeClaims, initDataClaims any, binding initDataBinding, iat, exp time.Time) map[string]any {
	teeClaims := make(map[string]any, len(claims))
	annotated := map[string]any{}
	for k, v := range claims {
		switch k {
		case "report_data":
			annotated["report_data"] = v
			annotated["runtime_data_claims"] = runtimeClaims
		case "init_data":
			annotated["init_data"] = v
			annotated["init_data_claims"] = initDataClaims
		default:
			teeClaims[k] = v
		}
	}
	annotated[tee] = teeClaims
	status, vector := appraise(tee, claims, binding)
	return map[string]any{
		"eat_profile": EATProfile,
		"iat":         iat.Unix(),
		"exp":         exp.Unix(),
		"iss":         tokenIssuer,
		"ear.verifier-id": map[string]any{
			"developer": earDeveloper,
			"build":     earBuild,
		},
		"submods": map[string]any{
			"cpu0": map[string]any{
				"ear.status":                 status,
				"ear.trustworthiness-vector": vector,
				"ear.appraisal-policy-id":    "default",
				annotatedKey:                 annotated,
			},
		},
	}
}

// teePubKeyFromClaims reads the tee-pubkey where Trustee's EAR tokens keep it.
func teePubKeyFromClaims(claims map[string]any) (kbs.TEEPubKey, error) {
	var cur any = claims
	for _, k := range []string{"submods", "cpu0", annotatedKey, "runtime_data_claims", "tee-pubkey"} {
		m, ok := cur.(map[string]any)
		if !ok {
			return kbs.TEEPubKey{}, fmt.Errorf("token claims have no %s", k)
		}
		if cur, ok = m[k]; !ok {
			return kbs.TEEPubKey{}, fmt.Errorf("token claims have no %s", k)
		}
	}
	b, err := json.Marshal(cur)
	if err != nil {
		return kbs.TEEPubKey{}, err
	}
	var pk kbs.TEEPubKey
	if err := json.Unmarshal(b, &pk); err != nil {
		return kbs.TEEPubKey{}, fmt.Errorf("decode tee-pubkey claim: %w", err)
	}
	return pk, nil
}
