package agent

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

const allowAll = "package policy\nimport rego.v1\ndefault allow := false\nallow if { data.plugin == \"resource\" }\n"

func startKBS(t *testing.T) string {
	t.Helper()
	srv, err := server.New(server.Options{
		Repository: t.TempDir(),
		Policy:     allowAll,
		Verifiers:  []attest.Verifier{sample.NewVerifier()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL
}

func TestEvidenceIsCompactAndUnhashed(t *testing.T) {
	a, err := New(Options{Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(context.Background(), []byte("runtime data"))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		SVN        string `json:"svn"`
		ReportData string `json:"report_data"`
	}
	if err := json.Unmarshal(ev, &got); err != nil {
		t.Fatal(err)
	}
	if rd, _ := base64.StdEncoding.DecodeString(got.ReportData); string(rd) != "runtime data" {
		t.Errorf("report data = %q", rd)
	}
	if strings.ContainsAny(string(ev), " \n") {
		t.Errorf("evidence not compact: %s", ev)
	}
}

func TestKBSToken(t *testing.T) {
	url := startKBS(t)
	a, err := New(Options{Attester: sample.NewAttester(), KBS: &kbs.Config{URL: url}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := a.Token(context.Background(), "kbs")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Token      string `json:"token"`
		TEEKeypair string `json:"tee_keypair"`
	}
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	if strings.Count(resp.Token, ".") != 2 {
		t.Errorf("token is not a JWT: %q", resp.Token)
	}
	blk, _ := pem.Decode([]byte(resp.TEEKeypair))
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("tee_keypair is not a PKCS#8 PEM: %q", resp.TEEKeypair)
	}
	if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	// Upstream makes a fresh key pair for every token request.
	b2, err := a.Token(context.Background(), "kbs")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b2), resp.TEEKeypair) {
		t.Error("second token reused the TEE key pair")
	}
}

func TestTokenErrors(t *testing.T) {
	a, _ := New(Options{Attester: sample.NewAttester()})
	for tt, want := range map[string]string{
		"kbs":     "kbs token config not configured in config file",
		"coco_as": "coco_as token config not configured in config file",
		"other":   "Invalid resource type",
	} {
		if _, err := a.Token(context.Background(), tt); err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %q", tt, err, want)
		}
	}
}

func TestCoCoASToken(t *testing.T) {
	var got map[string]any
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/attestation" || r.Method != http.MethodPost {
			http.Error(w, "wrong endpoint", 404)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("AS request %s: %v", b, err)
		}
		if strings.Contains(string(b), `"deny"`) {
			http.Error(w, "denied", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "the.as.token") // a failed write fails the client's side
	}))
	defer as.Close()
	a, _ := New(Options{Attester: sample.NewAttester(), CoCoASURL: as.URL})
	tok, err := a.Token(context.Background(), "coco_as")
	if err != nil || string(tok) != "the.as.token" {
		t.Fatalf("token = %q, %v", tok, err)
	}
	reqs, _ := got["verification_requests"].([]any)
	if len(reqs) != 1 {
		t.Fatalf("request = %v", got)
	}
	r0 := reqs[0].(map[string]any)
	ev, err := base64.RawURLEncoding.DecodeString(r0["evidence"].(string))
	if r0["tee"] != "sample" || err != nil || !strings.Contains(string(ev), `"report_data":""`) {
		t.Errorf("verification request = %v (evidence %s, %v)", r0, ev, err)
	}
}

type recordingLog struct{ texts []string }

func (l *recordingLog) Extend(_ context.Context, d, o, c string, _ *int) error {
	l.texts = append(l.texts, d+" "+o+" "+c)
	return nil
}

type measuringAttester struct{ attest.Attester }

func (measuringAttester) ExtendRuntimeMeasurement(context.Context, int, []byte) error { return nil }

func TestRuntimeMeasurementResults(t *testing.T) {
	ctx := context.Background()
	a, _ := New(Options{Attester: sample.NewAttester()})
	if res, err := a.ExtendRuntimeMeasurement(ctx, "d", "o", "c", nil); err != nil || res != MeasurementNotEnabled {
		t.Errorf("no event log: %v %v", res, err)
	}
	l := &recordingLog{}
	a, _ = New(Options{Attester: sample.NewAttester(), EventLog: l})
	if res, err := a.ExtendRuntimeMeasurement(ctx, "d", "o", "c", nil); err != nil || res != MeasurementNotSupported {
		t.Errorf("sample attester: %v %v", res, err)
	}
	a, _ = New(Options{Attester: measuringAttester{sample.NewAttester()}, EventLog: l})
	if res, err := a.ExtendRuntimeMeasurement(ctx, "d", "o", "c", nil); err != nil || res != MeasurementOK {
		t.Errorf("measuring attester: %v %v", res, err)
	}
	if len(l.texts) != 1 || l.texts[0] != "d o c" {
		t.Errorf("log = %q", l.texts)
	}
}
