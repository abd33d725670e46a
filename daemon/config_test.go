package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
// completion on once enabled; the file overrides each.
func TestLazyConfig(t *testing.T) {
	d := Default()
	if d.Lazy.Enable || !d.Lazy.Prefetch || !d.Lazy.BackgroundCompletion {
		t.Fatalf("default [lazy] = %+v", d.Lazy)
	}
	if s, err := d.Lazy.sizes(); err != nil || s.cache != 64<<20 || s.gap != 256<<10 {
		t.Fatalf("default lazy sizes %+v, %v", s, err)
	}
	cfg, _, err := Load(writeConfig(t, "[lazy]\nenable = true\ncache_size = \"1GiB\"\nbackground_completion = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := cfg.Lazy.sizes(); !cfg.Lazy.Enable || cfg.Lazy.BackgroundCompletion || !cfg.Lazy.Prefetch || s.cache != 1<<30 {
		t.Fatalf("[lazy] = %+v", cfg.Lazy)
	}
}
