package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"

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

// tokenSigner issues and verifies the ES256 EAR tokens of this KBS. The
// JWS is made and checked by go-jose; the protected header embeds the
// signer's public JWK (with "alg":"ES256"), as Trustee's EAR broker does.
type tokenSigner struct {
	key    *ecdsa.PrivateKey
	signer jose.Signer
}

// tokenAlgorithms are the only JWS algorithms verify accepts.
var tokenAlgorithms = []jose.SignatureAlgorithm{jose.ES256}

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
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, Algorithm: string(jose.ES256)}},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("token signer: %w", err)
	}
	return &tokenSigner{key: key, signer: signer}, nil
}

func (t *tokenSigner) sign(claims map[string]any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode token claims: %w", err)
	}
	jws, err := t.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return jws.CompactSerialize()
}

// verify checks the signature against this KBS's key and the validity
// window, and returns the claims (numbers kept exact). Only ES256 is
// accepted (alg "none" and every other algorithm fail to parse), and
// go-jose refuses critical header extensions it does not implement.
func (t *tokenSigner) verify(token string, now time.Time) (map[string]any, error) {
	jws, err := jose.ParseSignedCompact(token, tokenAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("parse token: %w", err)
	}
	payload, err := jws.Verify(&t.key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("token signature does not verify with this KBS's key: %w", err)
	}
	// go-jose verifies over the decoded header and payload re-encoded, so
	// a token spelled differently (non-canonical base64, line breaks) would
	// pass; accept only the exact form this KBS issues.
	if canonical, err := jws.CompactSerialize(); err != nil || canonical != token {
		return nil, errors.New("token is not in canonical compact form")
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
