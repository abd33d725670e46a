package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

func TestPolicySemanticsMatchTrustee(t *testing.T) {
	trusteeDefault, err := os.ReadFile("testdata/resource-policy-default.rego")
	if err != nil {
		t.Fatal(err)
	}
	trusteeAllowAll, err := os.ReadFile("testdata/resource-policy-allow_all.rego")
	if err != nil {
		t.Fatal(err)
	}
	claims := func(tee, status string) map[string]any {
		return map[string]any{"submods": map[string]any{"cpu0": map[string]any{
			"ear.status": status,
			annotatedKey: map[string]any{tee: map[string]any{"svn": "1"}},
		}}}
	}
	data := func(plugin string) map[string]any {
		return map[string]any{"plugin": plugin, "resource-path": []any{"a", "b", "c"}, "query": map[string]any{}}
	}
	// Trustee's default.rego denies only the sample TEE, whatever the
	// appraisal; cocoon's DefaultPolicy also requires every submodule to be
	// affirming (Trustee's affirming.rego), so that evidence the verifier
	// could not vouch for (an untrusted TPM AK, an unknown TDX TCB) gets
	// nothing.
	cases := []struct {
		name          string
		input         map[string]any
		data          map[string]any
		trusteeAllows bool
		cocoonAllows  bool
		openAllows    bool
	}{
		{"sample resource", claims("sample", StatusWarning), data("resource"), false, false, true},
		{"affirming sample", claims("sample", StatusAffirming), data("resource"), false, false, true},
		{"affirming tdx", claims("tdx", StatusAffirming), data("resource"), true, true, true},
		{"warning tdx", claims("tdx", StatusWarning), data("resource"), true, false, true},
		{"contraindicated tpm", claims("tpm", StatusContraindicated), data("resource"), true, false, true},
		{"no status", map[string]any{"submods": map[string]any{"cpu0": map[string]any{}}}, data("resource"), true, false, true},
		{"second submod warning", map[string]any{"submods": map[string]any{
			"cpu0": map[string]any{"ear.status": StatusAffirming},
			"gpu0": map[string]any{"ear.status": StatusWarning},
		}}, data("resource"), true, false, true},
		{"snp other plugin", claims("snp", StatusAffirming), data("nebula-ca"), false, false, false},
		{"no claims", map[string]any{}, data("resource"), true, false, true},
	}
	policies := []struct {
		name  string
		text  string
		allow func(trustee, cocoon, open bool) bool
	}{
		{"trustee default.rego", string(trusteeDefault), func(t, _, _ bool) bool { return t }},
		{"cocoon DefaultPolicy", DefaultPolicy, func(_, c, _ bool) bool { return c }},
		{"trustee allow_all.rego", string(trusteeAllowAll), func(_, _, o bool) bool { return o }},
		{"cocoon AllowAllPolicy", AllowAllPolicy, func(_, _, o bool) bool { return o }},
	}
	for _, p := range policies {
		pe, err := newPolicyEngine(p.text)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		for _, tc := range cases {
			t.Run(p.name+"/"+tc.name, func(t *testing.T) {
				got, err := pe.allow(context.Background(), tc.input, tc.data)
				if err != nil {
					t.Fatal(err)
				}
				if want := p.allow(tc.trusteeAllows, tc.cocoonAllows, tc.openAllows); got != want {
					t.Fatalf("allow = %v, want %v", got, want)
				}
			})
		}
	}
}

func TestPolicyResultHandling(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       bool
		compileErr bool
	}{
		{"undefined allow", "package policy\nx := 1", false, false},
		{"non-boolean allow", "package policy\nallow := \"yes\"", false, false},
		{"query data", "package policy\nallow if data.query.v == \"1\"\nallow if data[\"resource-path\"][2] == \"tag\"", true, false},
		{"rego v0 syntax", "package policy\ndefault allow = false\nallow { data.plugin == \"resource\" }", true, false},
		{"wrong package", "package kbs\nallow := true", false, true},
		{"syntax error", "package policy\nallow if {", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pe, err := newPolicyEngine(tc.text)
			if (err != nil) != tc.compileErr {
				t.Fatalf("compile: %v", err)
			}
			if err != nil {
				return
			}
			got, err := pe.allow(context.Background(), map[string]any{},
				map[string]any{"plugin": "resource", "resource-path": []any{"r", "t", "tag"}, "query": map[string]any{"v": "1"}})
			if err != nil || got != tc.want {
				t.Fatalf("allow = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseInitDataVector(t *testing.T) {
	body, err := os.ReadFile("testdata/initdata-allow-all-except-exec.toml")
	if err != nil {
		t.Fatal(err)
	}
	digest, claims, err := parseInitData(string(body))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(digest); got != "2385c5da0959d063638b2ab4ac252ae18e825f6ecb69815e4206b38077d0bcdd" {
		t.Fatalf("digest %s", got)
	}
	if _, ok := claims["policy.rego"].(string); !ok {
		if _, ok := claims["agent_policy_claims"]; !ok {
			t.Fatalf("claims lost the policy: %v", claims)
		}
	}
}

func TestParseInitDataClaims(t *testing.T) {
	doc := `version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://kbs:8080"
'''
"policy.rego" = '''
package agent_policy
default CreateContainerRequest := true
policy_data := {
  "containers": [{"image": "x"}]
}
'''
"other" = "plain"
`
	digest, claims, err := parseInitData(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(digest) != 48 {
		t.Fatalf("sha384 digest of %d bytes", len(digest))
	}
	b, _ := json.Marshal(claims)
	for _, want := range []string{`"aa.toml":{"token_configs":{"kbs":{"url":"http://kbs:8080"}}}`, `"agent_policy_claims":{"containers":[{"image":"x"}]}`, `"other":"plain"`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("claims %s lack %s", b, want)
		}
	}
	if strings.Contains(string(b), "policy.rego") {
		t.Fatal("policy.rego kept although policy_data parsed")
	}
	for _, bad := range []string{`algorithm = "sm3"` + "\n[data]\n", "not toml", `algorithm = "md5"`} {
		if _, _, err := parseInitData(bad); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
}

func TestCheckInitData(t *testing.T) {
	d256 := sha256.Sum256([]byte("init"))
	pad := func(b []byte, n int) string { out := make([]byte, n); copy(out, b); return hex.EncodeToString(out) }
	var pcrIn [64]byte
	copy(pcrIn[32:], d256[:])
	pcr8 := sha256.Sum256(pcrIn[:])
	tests := []struct {
		name, tee string
		reported  any
		digest    []byte
		ok        bool
	}{
		{"tdx padded to 48", attest.TEETDX, pad(d256[:], 48), d256[:], true},
		{"snp 32", attest.TEESNP, hex.EncodeToString(d256[:]), d256[:], true},
		{"snp truncates sha384", attest.TEESNP, hex.EncodeToString(make([]byte, 32)), make([]byte, 48), true},
		{"tpm pcr8", attest.TEETPM, hex.EncodeToString(pcr8[:]), d256[:], true},
		{"tpm raw digest is not pcr8", attest.TEETPM, hex.EncodeToString(d256[:]), d256[:], false},
		{"tpm sha384", attest.TEETPM, hex.EncodeToString(pcr8[:]), make([]byte, 48), false},
		{"sample base64", attest.TEESample, base64.StdEncoding.EncodeToString(d256[:]), d256[:], true},
		{"tdx mismatch", attest.TEETDX, pad([]byte{1}, 48), d256[:], false},
		{"not a string", attest.TEETDX, 5, d256[:], false},
		{"bad hex", attest.TEETDX, "zz", d256[:], false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkInitData(tc.tee, tc.reported, tc.digest); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestTokenSignVerify(t *testing.T) {
	s, err := newTokenSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	claims := earClaims(attest.TEETDX, attest.Claims{"report_data": "aa", "init_data": "bb", "quote": map[string]any{"x": 1}, "tcb_status": TDXTCBUpToDate},
		map[string]any{"nonce": "n"}, map[string]any{"k": "v"}, initDataMatched, now, now.Add(5*time.Minute))
	tok, err := s.sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.verify(tok, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	ae := got["submods"].(map[string]any)["cpu0"].(map[string]any)[annotatedKey].(map[string]any)
	for _, k := range []string{"tdx", "report_data", "runtime_data_claims", "init_data", "init_data_claims"} {
		if _, ok := ae[k]; !ok {
			t.Fatalf("annotated evidence lacks %s: %v", k, ae)
		}
	}
	if _, ok := ae["tdx"].(map[string]any)["report_data"]; ok {
		t.Fatal("report_data left inside the TEE claims")
	}
	if st := got["submods"].(map[string]any)["cpu0"].(map[string]any)["ear.status"]; st != "affirming" {
		t.Fatalf("status %v", st)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if !strings.Contains(string(hdr), `"alg":"ES256"`) || !strings.Contains(string(hdr), `"jwk":{`) {
		t.Fatalf("header %s", hdr)
	}
	parts := strings.Split(tok, ".")
	for name, bad := range map[string]string{
		"expired":   "",
		"tampered":  parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":9999999999}`)) + "." + parts[2],
		"short sig": parts[0] + "." + parts[1] + ".AAAA",
		"alg none":  base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".",
		"two parts": parts[0] + "." + parts[1],
	} {
		t.Run(name, func(t *testing.T) {
			at := now.Add(time.Minute)
			if bad == "" {
				bad, at = tok, now.Add(6*time.Minute)
			}
			if _, err := s.verify(bad, at); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzVerifyToken(f *testing.F) {
	s, _ := newTokenSigner(nil)
	now := time.Now()
	tok, _ := s.sign(map[string]any{"exp": now.Add(time.Hour).Unix()})
	f.Add(tok)
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, in string) {
		if _, err := s.verify(in, now); err == nil && in != tok {
			// ECDSA signatures are malleable only through (r, n-s); anything
			// else verifying means the check is broken.
			p := strings.Split(in, ".")
			q := strings.Split(tok, ".")
			if len(p) != 3 || p[0] != q[0] || p[1] != q[1] {
				t.Fatalf("accepted a token we did not sign: %q", in)
			}
		}
	})
}

func FuzzParseInitData(f *testing.F) {
	f.Add("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"policy_data := {}\"\n")
	f.Add("algorithm = \"sha512\"")
	f.Fuzz(func(t *testing.T, doc string) {
		d, _, err := parseInitData(doc)
		if err == nil && len(d) != 32 && len(d) != 48 && len(d) != 64 {
			t.Fatalf("digest of %d bytes", len(d))
		}
	})
}

func FuzzTEEPubKeyFromClaims(f *testing.F) {
	f.Add([]byte(`{"submods":{"cpu0":{"ear.veraison.annotated-evidence":{"runtime_data_claims":{"tee-pubkey":{"kty":"EC"}}}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var claims map[string]any
		if json.Unmarshal(b, &claims) != nil {
			return
		}
		pk, err := teePubKeyFromClaims(claims)
		if err != nil {
			return
		}
		if _, err := kbs.EncryptResponse(pk, []byte("x")); err == nil {
			if err := pk.Validate(); err != nil {
				t.Fatal("encrypted to an invalid key")
			}
		}
	})
}

// Expired sessions are deleted by the sweeper on each tick, not only when
// someone looks them up or the cap is reached.
func TestSessionSweeper(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st := newSessionStore(time.Minute, 100, clock)
	tick := make(chan time.Time)
	st.sweepOn(tick)
	defer st.close()
	for range 3 {
		if _, err := st.create("sample", "n"); err != nil {
			t.Fatal(err)
		}
	}
	// Two sends: the second is received only after the first sweep ran.
	tick <- time.Time{}
	tick <- time.Time{}
	if n := st.len(); n != 3 {
		t.Fatalf("%d sessions before expiry, want 3", n)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	tick <- time.Time{}
	tick <- time.Time{}
	if n := st.len(); n != 0 {
		t.Fatalf("%d sessions after expiry and a sweep, want 0", n)
	}
}

func TestSweepInterval(t *testing.T) {
	if got := sweepInterval(5 * time.Minute); got != time.Minute {
		t.Errorf("sweepInterval(5m) = %v", got)
	}
	if got := sweepInterval(10 * time.Second); got != 10*time.Second {
		t.Errorf("sweepInterval(10s) = %v", got)
	}
}
