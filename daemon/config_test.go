package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/agentpolicy"
	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/kata/cdh"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cocoond.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShippedConfigLoads(t *testing.T) {
	cfg, warnings, err := Load(filepath.Join("..", "contrib", "cocoond.toml"))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("contrib/cocoond.toml: %v %v", err, warnings)
	}
	s, _ := cfg.Unpack.sizes()
	if s.entry != 8<<30 || s.total != 64<<30 || cfg.Registry.MaxConcurrentDownloads != 3 {
		t.Errorf("unexpected values: %+v %+v", cfg, s)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	for body, key := range map[string]string{
		"[registry]\nmax_concurrent_downloads = 0\n": "registry.max_concurrent_downloads",
		"[registry]\ninsecure = [\"http://x\"]\n":    "registry.insecure",
		"[unpack]\nmax_entry_size = \"lots\"\n":      "unpack.max_entry_size",
		"log_format = \"xml\"\n":                     "log_format",
		"root = 3\n":                                 "root",
		"[storage]\nsize = \"20 parsecs\"\n":         "storage.size",
		"[lazy]\ncache_size = \"0\"\n":               "lazy.cache_size",
		"[lazy]\ncoalesce_gap = \"wide\"\n":          "lazy.coalesce_gap",
	} {
		_, _, err := Load(writeConfig(t, body))
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: error = %v, want one naming %s", body, err, key)
		}
	}
}

func TestConfigUnknownKeysWarn(t *testing.T) {
	_, warnings, err := Load(writeConfig(t, "colour = \"blue\"\n[registry]\nmirrors = []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0]+warnings[1], "colour") || !strings.Contains(warnings[0]+warnings[1], "registry.mirrors") {
		t.Errorf("warnings = %q", warnings)
	}
}

// TestConfigSizes: sizes read as go-units reads them, with the forms
// cocoonctl volume create --size always took.
func TestConfigSizes(t *testing.T) {
	cfg, _, err := Load(writeConfig(t, "[unpack]\nmax_entry_size = \"1Gi\"\nmax_total_size = \"1.5G\"\n[storage]\nsize = \"20G\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := cfg.Unpack.sizes(); s.entry != 1<<30 || s.total != 3<<29 {
		t.Errorf("sizes %+v", s)
	}
}

// TestLazyConfig: lazy pull is off by default with prefetch and background
// completion on once enabled, served by the detached server; the file overrides each.
func TestLazyConfig(t *testing.T) {
	d := Default()
	if d.Lazy.Enable || !d.Lazy.Prefetch || !d.Lazy.BackgroundCompletion || !d.Lazy.Detached {
		t.Fatalf("default [lazy] = %+v", d.Lazy)
	}
	if s, err := d.Lazy.sizes(); err != nil || s.cache != 64<<20 || s.gap != 256<<10 {
		t.Fatalf("default lazy sizes %+v, %v", s, err)
	}
	cfg, _, err := Load(writeConfig(t, "[lazy]\nenable = true\ncache_size = \"1GiB\"\nbackground_completion = false\ndetached = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := cfg.Lazy.sizes(); !cfg.Lazy.Enable || cfg.Lazy.BackgroundCompletion || cfg.Lazy.Detached || !cfg.Lazy.Prefetch || s.cache != 1<<30 {
		t.Fatalf("[lazy] = %+v", cfg.Lazy)
	}
}

// The Kata guest files in contrib/kata-guest load as cocoond, the
// kata-agent and guest-components would read them: cocoond.toml in
// kata-guest mode (AA, CDH, REST; no snapshots socket), and the example
// init-data with an aa.toml, cdh.toml and policy.rego that parse.
func TestShippedKataGuestFiles(t *testing.T) {
	cfg, warnings, err := Load(filepath.Join("..", "contrib", "kata-guest", "cocoond.toml"))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("contrib/kata-guest/cocoond.toml: %v %v", err, warnings)
	}
	if cfg.Mode != ModeKataGuest || !cfg.Serves(ServeAA) || !cfg.Serves(ServeCDH) || !cfg.Serves(ServeREST) || cfg.Serves(ServeSnapshotter) {
		t.Errorf("contrib/kata-guest/cocoond.toml serves %v", cfg.services())
	}
	if cfg.Attestation.InitData != "/run/confidential-containers/initdata/initdata.toml" {
		t.Errorf("init-data path %q is not where the kata-agent writes it", cfg.Attestation.InitData)
	}
	raw, err := os.ReadFile(filepath.Join("..", "contrib", "kata-guest", "initdata.toml"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := initdata.Parse(raw)
	if err != nil {
		t.Fatalf("contrib/kata-guest/initdata.toml: %v", err)
	}
	aaCfg, w, err := config.ParseAA([]byte(doc.Data["aa.toml"]), config.TOML)
	if err != nil || len(w) > 0 || aaCfg.TokenConfigs.KBS == nil {
		t.Errorf("aa.toml: %+v %v %v", aaCfg, w, err)
	}
	cdhCfg, w, err := config.ParseCDH([]byte(doc.Data["cdh.toml"]), config.TOML)
	if err != nil || len(w) > 0 || cdhCfg.Image == nil || cdhCfg.Image.ImageSecurityPolicyURI == nil || cdhCfg.Socket != cdh.DefaultSocket {
		t.Errorf("cdh.toml: %+v %v %v", cdhCfg, w, err)
	}
	if _, err := agentpolicy.New(doc.Data["policy.rego"]); err != nil {
		t.Errorf("policy.rego: %v", err)
	}
}
