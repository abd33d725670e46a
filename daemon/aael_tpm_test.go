//go:build cgo

package daemon

import (
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

// TestAAELThroughDaemonWithTPM: a workload records a runtime measurement
// over the REST API; cocoond extends the vTPM (simulator) and logs it; the
// next KBS token carries the event, replayed against the quoted PCR by the
// development KBS.
func TestAAELThroughDaemonWithTPM(t *testing.T) {
	cfg := serveConfig(t)
	a, v := tpmtest.New(t, tpmtest.WithAAELPath(filepath.Join(cfg.Attestation.EventlogDir, aaelFile)))
	withAttester(t, a)
	url := startKBSOnly(t, v)
	addr := freeAddr(t, "127.0.0.1")
	cfg.REST.Address = addr
	cfg.Attestation.AAConfig = writeFile(t, "aa.toml", "[token_configs.kbs]\nurl = \""+url+"\"\n[eventlog_config]\nenable_eventlog = true\n")
	runServe(t, cfg, "all")

	code, body := get(t, "POST", "http://"+addr+"/aa/aael", `{"domain":"github.com/confidential-containers","operation":"PullImage","content":"{\"image\":\"example/app:v1\"}"}`)
	if code != 200 || body != `{"success":"true"}` {
		t.Fatalf("/aa/aael = %d %s", code, body)
	}
	code, body = get(t, "GET", "http://"+addr+"/aa/token?token_type=kbs", "")
	if code != 200 {
		t.Fatalf("/aa/token = %d %s", code, body)
	}
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tok); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token = %q", tok.Token)
	}
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(claims), `"operation":"PullImage"`) || !strings.Contains(string(claims), "example/app:v1") {
		t.Errorf("token claims lack the AAEL event: %s", claims)
	}
}
