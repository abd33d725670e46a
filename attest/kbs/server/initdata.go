package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// initDataDoc is the init-data TOML document.
type initDataDoc struct {
	Version   string            `toml:"version"`
	Algorithm string            `toml:"algorithm"`
	Data      map[string]string `toml:"data"`
}

// parseInitData returns H(exact body bytes) with the document's algorithm
// and the claims Trustee derives from its data map: aa.toml and cdh.toml
// become JSON objects, and policy.rego becomes agent_policy_claims when
// its trailing policy_data object parses.
func parseInitData(body string) ([]byte, map[string]any, error) {
	var doc initDataDoc
	if _, err := toml.Decode(body, &doc); err != nil {
		return nil, nil, fmt.Errorf("parse init-data TOML: %w", err)
	}
	alg, err := kbs.ParseHashAlgorithm(doc.Algorithm)
	if err != nil {
		return nil, nil, fmt.Errorf("init-data algorithm: %w", err)
	}
	digest, err := alg.Sum([]byte(body))
	if err != nil {
		return nil, nil, err
	}
	claims := make(map[string]any, len(doc.Data))
	for k, v := range doc.Data {
		claims[k] = v
	}
	for _, k := range []string{"aa.toml", "cdh.toml"} {
		s, ok := doc.Data[k]
		if !ok {
			continue
		}
		var m map[string]any
		if _, err := toml.Decode(s, &m); err == nil {
			if j, err := toJSONValue(m); err == nil {
				claims[k] = j
			}
		}
	}
	if rego, ok := doc.Data["policy.rego"]; ok {
		if pd, ok := extractPolicyData(rego); ok {
			delete(claims, "policy.rego")
			claims["agent_policy_claims"] = pd
		}
	}
	return digest, claims, nil
}

// extractPolicyData parses the JSON object that starts at "policy_data := {"
// and runs to the end of the rego text (it must be the last item).
func extractPolicyData(rego string) (any, bool) {
	const marker = "policy_data := {"
	i := strings.Index(rego, marker)
	if i < 0 {
		return nil, false
	}
	var v any
	if err := json.Unmarshal([]byte(rego[i+len(marker)-1:]), &v); err != nil {
		return nil, false
	}
	return v, true
}

// toJSONValue round-trips v through JSON so TOML types (dates) become the
// plain values the policy engine and the token carry.
func toJSONValue(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	err = json.Unmarshal(b, &out)
	return out, err
}

// checkInitData compares the init-data digest with the value the verifier
// read from hardware, as Trustee's verifiers do: TDX MR_CONFIG_ID and SNP
// HOST_DATA hold the digest zero-padded or truncated to their length; a
// vTPM's PCR8 holds sha256(0^32 || digest) after AA extended it once.
func checkInitData(tee string, reported any, digest []byte) error {
	s, ok := reported.(string)
	if !ok {
		return fmt.Errorf("verifier reported init_data of type %T", reported)
	}
	var hw []byte
	var err error
	if tee == attest.TEESample {
		hw, err = base64.StdEncoding.DecodeString(s)
	} else {
		hw, err = hex.DecodeString(s)
	}
	if err != nil {
		return fmt.Errorf("decode reported init_data: %w", err)
	}
	var want []byte
	if tee == attest.TEETPM {
		if len(digest) != sha256.Size {
			return fmt.Errorf("TPM binds init-data in PCR8 by a sha256 extend; the init-data digest has %d bytes", len(digest))
		}
		var in [64]byte
		copy(in[32:], digest)
		sum := sha256.Sum256(in[:])
		want = sum[:]
	} else {
		want = make([]byte, len(hw))
		copy(want, digest)
	}
	if !bytes.Equal(want, hw) {
		return fmt.Errorf("init-data digest does not match the %s evidence", tee)
	}
	return nil
}
