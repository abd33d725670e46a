package kbs

import (
	"encoding/json"
	"os"
	"testing"
)

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha384"]}}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err == nil && r.TEE == "" {
			t.Fatal("accepted a request without tee")
		}
	})
}

func FuzzParseChallenge(f *testing.F) {
	f.Add([]byte(`{"nonce":"abc","extra-params":""}`))
	f.Add([]byte(`{"nonce":"abc","extra-params":{"selected-hash-algorithm":"sha512"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseChallenge(b)
		if err != nil {
			return
		}
		if h, err := c.SelectedHashAlgorithm(); err == nil {
			if _, err := h.Sum(nil); err != nil {
				t.Fatalf("selected unusable algorithm %q", h)
			}
		}
	})
}

func FuzzParseAttestation(f *testing.F) {
	k, _ := GenerateTEEKey("")
	good, _ := json.Marshal(Attestation{RuntimeData: RuntimeData{Nonce: "n", TEEPubKey: k.PublicJWK()},
		TEEEvidence: CompositeEvidence{PrimaryEvidence: json.RawMessage(`{"svn":"1"}`)}})
	f.Add(good)
	f.Add([]byte(`{"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"","y":""}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAttestation(b)
		if err != nil {
			return
		}
		if err := a.RuntimeData.TEEPubKey.Validate(); err != nil {
			t.Fatalf("accepted invalid tee-pubkey: %v", err)
		}
		if _, err := ReportData(SHA384, a.RuntimeData.TEEPubKey, a.RuntimeData.Nonce, a.TEEEvidence.AdditionalEvidence); err != nil {
			t.Fatalf("accepted attestation cannot be bound: %v", err)
		}
	})
}

func FuzzDecryptResponse(f *testing.F) {
	b, err := os.ReadFile("testdata/jwe-ecdh-es-a256kw-p256.generated.json")
	if err != nil {
		f.Fatal(err)
	}
	var v struct {
		R json.RawMessage `json:"kbs_response"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(v.R))
	k, _ := GenerateTEEKey("")
	own, _ := EncryptResponse(k.PublicJWK(), []byte("plain"))
	f.Add(own)
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := k.DecryptResponse(b)
		if err == nil && string(b) != string(own) && string(pt) == "plain" && len(b) < 10 {
			t.Fatal("implausible decryption")
		}
	})
}

func FuzzParseTokenTimes(f *testing.F) {
	f.Add("e30.eyJleHAiOjE3MDAwMDAwMDB9.c2ln")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, s string) {
		tt, err := ParseTokenTimes(s)
		if err == nil && !tt.Expiry.IsZero() && tt.Expiry.Unix() < 0 {
			t.Fatalf("negative expiry from %q", s)
		}
	})
}

func FuzzParseResourceURI(f *testing.F) {
	f.Add("kbs:///default/key/1")
	f.Add("kbs+p://h/a?b=c")
	f.Add("a/b/c")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseResourceURI(s)
		if err != nil {
			return
		}
		for _, seg := range u.Path {
			if seg == "." || seg == ".." || !ValidSegment(seg) {
				t.Fatalf("accepted segment %q from %q", seg, s)
			}
		}
		if u.Plugin == "resource" && len(u.Path) != 3 {
			t.Fatalf("resource URI %q with %d segments", s, len(u.Path))
		}
	})
}
