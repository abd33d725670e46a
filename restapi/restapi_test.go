package restapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/agent"
)

// recordingAgent is a test double of the AttestationAgent seam that records
// what the handler passed through.
type recordingAgent struct {
	runtimeData []byte
	aael        []string
	result      agent.MeasurementResult
}

func (a *recordingAgent) TEE() string              { return "sample" }
func (a *recordingAgent) AdditionalTEEs() []string { return nil }
func (a *recordingAgent) Evidence(_ context.Context, rd []byte) ([]byte, error) {
	a.runtimeData = rd
	if len(rd) > 64 {
		return nil, errors.New("Report data must be no more than 64 bytes")
	}
	return []byte(`{"svn":"1"}`), nil
}
func (a *recordingAgent) AdditionalEvidence(_ context.Context, rd []byte) ([]byte, error) {
	a.runtimeData = rd
	return nil, nil
}
func (a *recordingAgent) Token(_ context.Context, tt string) ([]byte, error) {
	if tt != "kbs" {
		return nil, errors.New("Invalid resource type")
	}
	return []byte(`{"token":"t","tee_keypair":"k"}`), nil
}
func (a *recordingAgent) ExtendRuntimeMeasurement(_ context.Context, d, o, c string, _ *uint64) (agent.MeasurementResult, error) {
	if strings.Contains(c, "\n") {
		return 0, errors.New("content contains newline")
	}
	a.aael = append(a.aael, d+" "+o+" "+c)
	return a.result, nil
}

type mapCDH map[string]string

func (m mapCDH) GetResource(_ context.Context, uri string) ([]byte, error) {
	if v, ok := m[uri]; ok {
		return []byte(v), nil
	}
	return nil, errors.New("resource not found")
}

func do(h http.Handler, method, target, body, peer string) (int, string) {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.RemoteAddr = peer
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

const local = "127.0.0.1:40000"

func TestFeatureGate(t *testing.T) {
	cdh := mapCDH{"kbs:///default/key/1": "secret"}
	for _, tc := range []struct {
		features        Features
		aaCode, cdhCode int
		aaBody, cdhBody string
	}{
		{FeatureResource, 404, 200, "Attestation Feature Not Enabled", "secret"},
		{FeatureAttestation, 200, 404, `{"svn":"1"}`, "Resource Feature Not Enabled"},
		{FeatureAll, 200, 200, `{"svn":"1"}`, "secret"},
	} {
		t.Run(string(tc.features), func(t *testing.T) {
			h := New(Options{Features: tc.features, Agent: &recordingAgent{}, CDH: cdh, Version: "v"})
			if code, body := do(h, "GET", "/aa/evidence?runtime_data=abc", "", local); code != tc.aaCode || body != tc.aaBody {
				t.Errorf("/aa/evidence = %d %q", code, body)
			}
			if code, body := do(h, "GET", "/cdh/resource/default/key/1", "", local); code != tc.cdhCode || body != tc.cdhBody {
				t.Errorf("/cdh/resource = %d %q", code, body)
			}
			if code, body := do(h, "GET", "/info", "", local); code != 200 || !strings.Contains(body, `"feature":"`+string(tc.features)+`"`) {
				t.Errorf("/info = %d %q", code, body)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	agent := &recordingAgent{}
	h := New(Options{Features: FeatureAll, Agent: agent, CDH: mapCDH{"kbs:///r/t/x": "v"}, Version: "1.0"})
	for _, tc := range []struct {
		method, target, body string
		code                 int
		want                 string
	}{
		{"GET", "/info", "", 200, `{"version":"1.0","tee":"sample","feature":"all"}`},
		{"POST", "/info", "", 405, "Method Not Allowed"},
		{"GET", "/nope", "", 404, "URL NOT FOUND"},
		{"GET", "/aa/evidence", "", 400, "BAD REQUEST"},
		{"GET", "/aa/evidence?runtime_data=x&encoding=hex", "", 400, "BAD REQUEST"},
		{"GET", "/aa/evidence?runtime_data=!!&encoding=base64", "", 400, "BAD REQUEST"},
		{"GET", "/aa/evidence?runtime_data=" + strings.Repeat("a", 65), "", 500, "Report data must be no more than 64 bytes"},
		{"GET", "/aa/evidence/", "", 404, "URL NOT FOUND"},
		{"POST", "/aa/evidence?runtime_data=a", "", 404, "URL NOT FOUND"},
		{"GET", "/aa/additional-evidence?runtime_data=a", "", 200, ""},
		{"GET", "/aa/token", "", 400, "BAD REQUEST"},
		{"GET", "/aa/token?token_type=kbs", "", 200, `{"token":"t","tee_keypair":"k"}`},
		{"GET", "/aa/token?token_type=other", "", 500, "Invalid resource type"},
		{"GET", "/aa/aael", "", 404, "URL NOT FOUND"},
		{"POST", "/aa/aael", `{"domain":"d","operation":"o","content":"c"}`, 200, `{"success":"true"}`},
		{"POST", "/aa/aael", `{"domain":"d","operation":"o"}`, 500, "Illegal AAEL eventry format: missing field: domain, operation and content are required"},
		{"POST", "/aa/aael", `not json`, 500, "Illegal AAEL eventry format: invalid character 'o' in literal null (expecting 'u')"},
		{"POST", "/aa/aael", `{"domain":"d","operation":"o","content":"a\nb"}`, 500, "content contains newline"},
		{"PUT", "/cdh/resource/r/t/x", "", 200, "v"},
		{"GET", "/cdh/resource/r/t/x?q=1", "", 200, "v"},
		{"GET", "/cdh/resource", "", 404, "URL NOT FOUND"},
		{"GET", "/cdh/resource/", "", 500, "resource not found"},
		{"GET", "/cdh/other/r/t/x", "", 404, "URL NOT FOUND"},
		{"GET", "/cdh/resource/r/t/missing", "", 500, "resource not found"},
		{"GET", "/cdh/resource/r/../x", "", 400, `BAD REQUEST: resource path segment ".." is a traversal`},
		{"GET", "/cdh/resource/r/%2e%2e/x", "", 400, `BAD REQUEST: resource path segment "%2e%2e" is a traversal`},
		{"GET", "/cdh/resource/r%2Ft/x/y", "", 400, `BAD REQUEST: resource path segment "r%2Ft" decodes to "r/t", which holds '/': it would change the KBS request`},
		{"GET", "/cdh/resource/r/t/x/extra", "", 500, "resource not found"},
		{"GET", "/cdh%2Fresource/r/t/x", "", 404, "URL NOT FOUND"},
	} {
		code, body := do(h, tc.method, tc.target, tc.body, local)
		if code != tc.code || body != tc.want {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.target, code, body, tc.code, tc.want)
		}
	}
}

func TestRuntimeDataDecoding(t *testing.T) {
	agent := &recordingAgent{}
	h := New(Options{Features: FeatureAttestation, Agent: agent})
	for target, want := range map[string]string{
		"/aa/evidence?runtime_data=a+b%21":                  "a b!",
		"/aa/evidence?runtime_data=aGk_&encoding=base64":    "hi?",
		"/aa/evidence?runtime_data=aGk_%3D&encoding=base64": "hi?",
	} {
		if code, _ := do(h, "GET", target, "", local); code != 200 || string(agent.runtimeData) != want {
			t.Errorf("%s: %d, runtime data %q, want %q", target, code, agent.runtimeData, want)
		}
	}
}

func TestAAELResults(t *testing.T) {
	for res, want := range map[agent.MeasurementResult]string{
		agent.MeasurementNotSupported: `{"success":"false","message": "The platform does not support runtime measurement"}`,
		agent.MeasurementNotEnabled:   `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}`,
		agent.MeasurementResult(9):    `{"success":"false","message": "Unknown runtime measurement result"}`,
	} {
		h := New(Options{Features: FeatureAll, Agent: &recordingAgent{result: res}})
		if code, body := do(h, "POST", "/aa/aael", `{"domain":"d","operation":"o","content":"c"}`, local); code != 200 || body != want {
			t.Errorf("result %d: %d %q", res, code, body)
		}
	}
}

func TestNonLoopbackForbidden(t *testing.T) {
	h := New(Options{Features: FeatureAll, Agent: &recordingAgent{}, CDH: mapCDH{}})
	for _, peer := range []string{"10.0.0.2:5555", "[fe80::1]:80", "garbage"} {
		for _, p := range []string{"/info", "/aa/evidence?runtime_data=a", "/cdh/resource/a/b/c", "/x"} {
			if code, body := do(h, "GET", p, "", peer); code != 403 || body != "Forbidden" {
				t.Errorf("%s from %s = %d %q", p, peer, code, body)
			}
		}
	}
	if code, _ := do(h, "GET", "/info", "", "[::1]:80"); code != 200 {
		t.Errorf("::1 refused: %d", code)
	}
}

func TestOversizedRequests(t *testing.T) {
	h := New(Options{Features: FeatureAll, Agent: &recordingAgent{}, MaxBodyBytes: 100})
	if code, _ := do(h, "POST", "/aa/aael", `{"domain":"`+strings.Repeat("d", 200)+`"}`, local); code != 413 {
		t.Errorf("large body = %d", code)
	}
	if code, _ := do(h, "GET", "/aa/evidence?runtime_data="+strings.Repeat("a", maxURI), "", local); code != 414 {
		t.Errorf("long URI = %d", code)
	}
}

func TestParseFeatures(t *testing.T) {
	for _, s := range []string{"all", "attestation", "resource"} {
		if f, err := ParseFeatures(s); err != nil || string(f) != s {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"none", "", "ALL"} {
		if _, err := ParseFeatures(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestInfoReportsTEEOnlyWithAttestation: upstream's /info asks the
// attestation agent for the TEE only when the attestation feature is on.
func TestInfoReportsTEEOnlyWithAttestation(t *testing.T) {
	for f, want := range map[Features]string{
		FeatureResource:    `{"version":"v","feature":"resource"}`,
		FeatureAttestation: `{"version":"v","tee":"sample","feature":"attestation"}`,
		FeatureAll:         `{"version":"v","tee":"sample","feature":"all"}`,
	} {
		h := New(Options{Features: f, Agent: &recordingAgent{}, CDH: mapCDH{}, Version: "v"})
		if code, body := do(h, "GET", "/info", "", local); code != 200 || body != want {
			t.Errorf("%s: /info = %d %s, want %s", f, code, body, want)
		}
	}
}

// TestQueryParsingNeverFails: upstream parses the query with Rust's
// form_urlencoded, which takes what it cannot decode literally, splits on
// '&' only, and lets the last duplicate win.
func TestQueryParsingNeverFails(t *testing.T) {
	agent := &recordingAgent{}
	h := New(Options{Features: FeatureAttestation, Agent: agent})
	for _, tc := range []struct{ query, want string }{
		{"runtime_data=a;b", "a;b"},
		{"runtime_data=%zz", "%zz"},
		{"runtime_data=50%", "50%"},
		{"runtime_data=%4", "%4"},
		{"runtime_data=first&runtime_data=last", "last"},
		{"&&runtime_data=x&", "x"},
		{"runtime_data", ""},
		{"runtime_data=a=b", "a=b"},
		{"runtime_data=a%2Bb+c", "a+b c"},
		{"runtime%5Fdata=named", "named"},
		{"runtime_data=%ff%fe", "\uFFFD\uFFFD"},
		{"runtime_data=%E2%82x", "\uFFFDx"},
		{"runtime_data=%ED%A0%80", "\uFFFD\uFFFD\uFFFD"},
		{"runtime_data=%C3%A9", "\u00e9"},
		{"runtime_data=aGk_&encoding=hex&encoding=base64", "hi?"},
	} {
		agent.runtimeData = nil
		code, body := do(h, "GET", "/aa/evidence?"+tc.query, "", local)
		if code != 200 || string(agent.runtimeData) != tc.want {
			t.Errorf("%s: %d %q, runtime data %q, want %q", tc.query, code, body, agent.runtimeData, tc.want)
		}
	}
	if code, body := do(h, "GET", "/aa/token?token_type=kbs;x", "", local); code != 500 || body != "Invalid resource type" {
		t.Errorf("token_type=kbs;x = %d %q, want the agent's error", code, body)
	}
	if code, body := do(h, "GET", "/aa/token?token_type=x&token_type=kbs", "", local); code != 200 {
		t.Errorf("duplicate token_type = %d %q, want the last (kbs)", code, body)
	}
}
