package daemon

import "testing"

// TestAAELEnabledWithoutRegister: aa.toml enables the event log on the
// sample TEE, which has no runtime measurement register. Upstream AA opens
// its log all the same and answers each extension NotSupported ("The
// platform does not support runtime measurement"), not NotEnabled.
func TestAAELEnabledWithoutRegister(t *testing.T) {
	url := startKBSOnly(t)
	cfg := serveConfig(t)
	cfg.REST.Address = freeAddr(t, "127.0.0.1")
	cfg.Attestation.TEE = "sample"
	cfg.Attestation.AAConfig = writeFile(t, "aa.toml", "[token_configs.kbs]\nurl = \""+url+"\"\n[eventlog_config]\nenable_eventlog = true\n")
	runServe(t, cfg, "all")
	code, body := get(t, "POST", "http://"+cfg.REST.Address+"/aa/aael", `{"domain":"d","operation":"o","content":"c"}`)
	if code != 200 || body != `{"success":"false","message": "The platform does not support runtime measurement"}` {
		t.Errorf("/aa/aael = %d %s", code, body)
	}
}
