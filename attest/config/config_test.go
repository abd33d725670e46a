package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func ptr(s string) *string { return &s }

func TestLoadAAUpstream(t *testing.T) {
	exampleCert := func(t *testing.T, c *AAConfig) {
		t.Helper()
		if c.TokenConfigs.KBS.Cert == nil || !strings.HasPrefix(*c.TokenConfigs.KBS.Cert, "-----BEGIN CERTIFICATE-----\nMIIDljCCAn6gAwIBAgIUR/UNh13GFam4emgludtype") {
			t.Errorf("kbs cert not loaded: %v", c.TokenConfigs.KBS.Cert)
		}
	}
	for _, tc := range []struct {
		file   string
		kbs    *KBSTokenConfig // Cert compared separately when checkCert
		as     *CoCoASTokenConfig
		level  string
		exCert bool
	}{
		{"config.example.toml", &KBSTokenConfig{URL: "https://127.0.0.1:8080", TEEKeyAlgorithm: "ECDH-ES+A256KW-P256"}, &CoCoASTokenConfig{URL: "http://127.0.0.1:8000"}, "info", true},
		{"config.example.json", &KBSTokenConfig{URL: "https://127.0.0.1:8080", TEEKeyAlgorithm: "ECDH-ES+A256KW-P256"}, &CoCoASTokenConfig{URL: "http://127.0.0.1:8000"}, "info", true},
		{"config1.toml", &KBSTokenConfig{URL: "https://127.0.0.1:8080", Cert: ptr("cert"), TEEKeyAlgorithm: "ECDH-ES+A256KW-P256"}, &CoCoASTokenConfig{URL: "http://127.0.0.1:8000"}, "warn", false},
		{"config2.toml", &KBSTokenConfig{URL: "https://127.0.0.1:8080", Cert: ptr("cert"), TEEKeyAlgorithm: "ECDH-ES+A256KW-P256"}, nil, "warn", false},
		{"config3.toml", &KBSTokenConfig{URL: "https://127.0.0.1:8080", TEEKeyAlgorithm: "ECDH-ES+A256KW-P256"}, &CoCoASTokenConfig{URL: "http://127.0.0.1:8000"}, "warn", false},
		{"config4.toml", nil, nil, "warn", false},
		{"config5.toml", nil, nil, "info", false},
		{"config6.toml", nil, nil, "info", false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			c, warn, err := LoadAA(filepath.Join("testdata", "aa", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if len(warn) != 0 {
				t.Errorf("warnings for an upstream file: %v", warn)
			}
			if tc.exCert {
				exampleCert(t, c)
				c.TokenConfigs.KBS.Cert = nil
			}
			if !reflect.DeepEqual(c.TokenConfigs.KBS, tc.kbs) || !reflect.DeepEqual(c.TokenConfigs.CoCoAS, tc.as) {
				t.Errorf("token configs = %+v %+v", c.TokenConfigs.KBS, c.TokenConfigs.CoCoAS)
			}
			if c.EventlogConfig != (EventlogConfig{InitPCR: 17}) || c.Log.Level != tc.level {
				t.Errorf("eventlog %+v, log %+v", c.EventlogConfig, c.Log)
			}
		})
	}
	t.Run("kata initdata aa.toml", func(t *testing.T) {
		c, warn, err := LoadAA(filepath.Join("testdata", "kata", "initdata-aa.toml"))
		if err != nil || len(warn) != 0 {
			t.Fatal(err, warn)
		}
		if c.TokenConfigs.KBS.URL != "http://kbs-service.xxx.cluster.local:8080" || c.TokenConfigs.CoCoAS == nil {
			t.Errorf("got %+v", c.TokenConfigs)
		}
	})
}

func TestParseAA(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		format  Format
		wantErr string
		warn    []string
		check   func(*testing.T, *AAConfig)
	}{
		{name: "eventlog enabled", doc: "[eventlog_config]\ninit_pcr = 8\nenable_eventlog = true\n", check: func(t *testing.T, c *AAConfig) {
			if c.EventlogConfig != (EventlogConfig{InitPCR: 8, EnableEventlog: true}) {
				t.Errorf("%+v", c.EventlogConfig)
			}
		}},
		{name: "string values as the config crate converts", doc: "[eventlog_config]\ninit_pcr = \"9\"\nenable_eventlog = \"true\"\n", check: func(t *testing.T, c *AAConfig) {
			if c.EventlogConfig != (EventlogConfig{InitPCR: 9, EnableEventlog: true}) {
				t.Errorf("%+v", c.EventlogConfig)
			}
		}},
		{name: "json null cert", format: JSON, doc: `{"token_configs":{"kbs":{"url":"http://k","cert":null}}}`, check: func(t *testing.T, c *AAConfig) {
			if c.TokenConfigs.KBS.Cert != nil {
				t.Error("null cert set")
			}
		}},
		{name: "tee key algorithm", doc: "[token_configs.kbs]\nurl = \"http://k\"\ntee_key_algorithm = \"RSA-OAEP-256\"\n", check: func(t *testing.T, c *AAConfig) {
			if c.TokenConfigs.KBS.TEEKeyAlgorithm != "RSA-OAEP-256" {
				t.Error(c.TokenConfigs.KBS.TEEKeyAlgorithm)
			}
		}},
		{name: "unknown keys warn", doc: "foo = 1\n[token_configs.kbs]\nurl = \"http://k\"\nproxy = \"x\"\n[token_configs.ccm_as]\nurl = \"y\"\n", warn: []string{"unknown key token_configs.kbs.proxy", "unknown key token_configs.ccm_as", "unknown key foo"}},
		{name: "odd log level warns", doc: "[log]\nlevel = \"loud\"\n", warn: []string{`log.level: unrecognised level "loud"`}},
		{name: "kbs url missing", doc: "[token_configs.kbs]\ncert = \"x\"\n", wantErr: "field token_configs.kbs.url: missing"},
		{name: "coco_as url missing", doc: "[token_configs.coco_as]\n", wantErr: "field token_configs.coco_as.url: missing"},
		{name: "bad algorithm", doc: "[token_configs.kbs]\nurl = \"u\"\ntee_key_algorithm = \"A128KW\"\n", wantErr: "field token_configs.kbs.tee_key_algorithm"},
		{name: "negative pcr", doc: "[eventlog_config]\ninit_pcr = -1\n", wantErr: "field eventlog_config.init_pcr"},
		{name: "bool as unknown word", doc: "[eventlog_config]\nenable_eventlog = \"t\"\n", wantErr: "field eventlog_config.enable_eventlog"},
		{name: "url not a string", doc: "[token_configs.kbs]\nurl = 8080\n", wantErr: "field token_configs.kbs.url: want a string"},
		{name: "section not a table", doc: "log = \"debug\"\n", wantErr: "field log: want a table"},
		{name: "syntax error", doc: "[log\n", wantErr: "parse TOML"},
		{name: "json syntax error", format: JSON, doc: "{", wantErr: "parse JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, warn, err := ParseAA([]byte(tc.doc), tc.format)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameSet(warn, tc.warn) {
				t.Errorf("warnings = %q, want %q", warn, tc.warn)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

func writeCmdline(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAAFromKernelCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, env, cmdline string
		wantURL            string // "" means no KBS config
		wantWarn           bool
	}{
		{"cmdline cc_kbc", "", "console=ttyS0 agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080 quiet\n", "http://10.0.0.1:8080", false},
		{"env wins", "cc_kbc::http://env:1", "agent.aa_kbc_params=cc_kbc::http://cmd:2", "http://env:1", false},
		{"first occurrence wins", "", "agent.aa_kbc_params=cc_kbc::http://a agent.aa_kbc_params=cc_kbc::http://b", "http://a", false},
		{"offline kbc", "", "agent.aa_kbc_params=offline_fs_kbc::null", "", true},
		{"absent", "", "console=ttyS0", "", true},
		{"malformed", "", "agent.aa_kbc_params=cc_kbc", "", true},
		{"three segments", "cc_kbc::http://x::y", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == KBCParamsEnv {
					return tc.env
				}
				return ""
			}
			c, warn := AAFromKernelCmdline(getenv, writeCmdline(t, tc.cmdline))
			if (len(warn) > 0) != tc.wantWarn {
				t.Errorf("warnings = %v", warn)
			}
			got := ""
			if c.TokenConfigs.KBS != nil {
				got = c.TokenConfigs.KBS.URL
			}
			if got != tc.wantURL || c.EventlogConfig.InitPCR != 17 {
				t.Errorf("kbs url = %q, want %q", got, tc.wantURL)
			}
		})
	}
	if _, warn := AAFromKernelCmdline(func(string) string { return "" }, filepath.Join(t.TempDir(), "missing")); len(warn) == 0 {
		t.Error("unreadable cmdline gave no warning")
	}
}

func TestLoadCDHUpstream(t *testing.T) {
	// In example.config.toml, work_dir and extra_root_certificates come
	// after [[image.registry_config.registry.mirror]], so TOML puts them in
	// the last mirror, where upstream ignores them: the TOML example really
	// has the default work_dir and no extra certificates (and we warn).
	example := func(t *testing.T, c *CDHConfig, workDir string, certs int) {
		t.Helper()
		if c.Socket != DefaultCDHSocket || c.AA.AASocket != DefaultAASocket || c.KBC.Name != "cc_kbc" || c.KBC.URL != "http://example.io:8080" {
			t.Errorf("top level %+v %+v %+v", c.Socket, c.AA, c.KBC)
		}
		if c.KBC.KBSCert == nil || !strings.Contains(*c.KBC.KBSCert, "BEGIN CERTIFICATE") {
			t.Error("kbs_cert missing")
		}
		wantCreds := []Credential{
			{"kbs:///default/aliyun/ecs_ram_role", "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/ecsRamRole.json"},
			{"kbs:///default/test/file", "/run/confidential-containers/cdh/kbs/test/file"},
		}
		if !reflect.DeepEqual(c.Credentials, wantCreds) {
			t.Errorf("credentials %+v", c.Credentials)
		}
		img := c.Image
		if img == nil {
			t.Fatal("no [image]")
		}
		if img.WorkDir != workDir || img.MaxConcurrentLayerDownloadsPerImage != 3 ||
			*img.SigstoreConfigURI != "kbs:///default/sigstore-config/test" ||
			*img.ImageSecurityPolicyURI != "kbs:///default/security-policy/test" ||
			*img.AuthenticatedRegistryCredentialsURI != "kbs:///default/credential/test" ||
			*img.RegistryConfigurationURI != "kbs:///default/registry-configuration/test" ||
			len(img.ExtraRootCertificates) != certs {
			t.Errorf("image %+v", img)
		}
		if p := img.ImagePullProxy; p == nil || *p.HTTPSProxy != "http://127.0.0.1:5432" || *p.HTTPProxy != "http://127.0.0.1:5432" || *p.NoProxy != "192.168.0.1,localhost" {
			t.Errorf("proxy %+v", img.ImagePullProxy)
		}
		wantReg := &RegistryConfig{
			UnqualifiedSearchRegistries: []string{"docker.io", "example1.com"},
			Registries: []Registry{
				{Prefix: "example.com/banned", Blocked: true},
				{Prefix: "example.com/foo", Location: "internal-registry-for-example.com/bar", Mirrors: []Mirror{
					{Location: "example-mirror-0.local/mirror-for-foo"},
					{Location: "example-mirror-1.local/mirrors/foo", Insecure: true},
				}},
				{Location: "docker.io", Mirrors: []Mirror{{Location: "123456.mirror.aliyuncs.com"}}},
			},
		}
		if !reflect.DeepEqual(img.RegistryConfig, wantReg) {
			t.Errorf("registry config %+v", img.RegistryConfig)
		}
	}
	for _, tc := range []struct {
		file  string
		warn  []string
		check func(*testing.T, *CDHConfig)
	}{
		{"cdh/example.config.toml", []string{
			"unknown key image.registry_config.registry[2].mirror[0].extra_root_certificates",
			"unknown key image.registry_config.registry[2].mirror[0].work_dir",
		}, func(t *testing.T, c *CDHConfig) {
			example(t, c, DefaultImageWorkDir, 0)
			if c.Image.ImageSecurityPolicy != nil {
				t.Error("commented-out image_security_policy loaded")
			}
		}},
		{"cdh/example.config.json", nil, func(t *testing.T, c *CDHConfig) {
			example(t, c, "/run/image-rs", 1)
			if c.Image.ImageSecurityPolicy == nil || *c.Image.ImageSecurityPolicy != `{"default":[{"type": "reject"}]}` {
				t.Error("inline image_security_policy not loaded")
			}
		}},
		{"cdh/tests-cdh.toml", nil, func(t *testing.T, c *CDHConfig) {
			if c.KBC != (KBCConfig{Name: "offline_fs_kbc", URL: "null"}) || c.AA.AASocket != DefaultAASocket || c.Log.Level != "info" {
				t.Errorf("%+v", c)
			}
			if c.Image.MaxConcurrentLayerDownloadsPerImage != 4 || c.Image.WorkDir != DefaultImageWorkDir || c.Image.RegistryConfig != nil {
				t.Errorf("image %+v", c.Image)
			}
		}},
		{"kata/initdata-cdh.toml", nil, func(t *testing.T, c *CDHConfig) {
			if c.Socket != "unix:///run/guest-services/cdh.sock" || c.KBC.Name != "cc_kbc" || len(c.Credentials) != 0 || c.Image != nil {
				t.Errorf("%+v", c)
			}
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			c, warn, err := LoadCDH(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !sameSet(warn, tc.warn) {
				t.Errorf("warnings = %q, want %q", warn, tc.warn)
			}
			tc.check(t, c)
		})
	}
}

func TestParseCDH(t *testing.T) {
	for _, tc := range []struct {
		name, doc, wantErr string
		warn               []string
		check              func(*testing.T, *CDHConfig)
	}{
		{name: "minimal defaults", doc: "[kbc]\nname = \"cc_kbc\"\n", check: func(t *testing.T, c *CDHConfig) {
			if c.KBC.URL != "" || c.Socket != DefaultCDHSocket || c.SkipSealedSecretVerification || c.Image != nil || c.Log.Level != "info" {
				t.Errorf("%+v", c)
			}
		}},
		{name: "image defaults", doc: "[kbc]\nname = \"cc_kbc\"\n[image]\n[image.registry_config]\n", check: func(t *testing.T, c *CDHConfig) {
			if c.Image.WorkDir != DefaultImageWorkDir || c.Image.MaxConcurrentLayerDownloadsPerImage != 3 ||
				!reflect.DeepEqual(c.Image.RegistryConfig.UnqualifiedSearchRegistries, []string{"docker.io"}) {
				t.Errorf("%+v", c.Image)
			}
		}},
		{name: "skip verification", doc: "skip_sealed_secret_verification = true\n[kbc]\nname = \"offline_fs_kbc\"\n", check: func(t *testing.T, c *CDHConfig) {
			if !c.SkipSealedSecretVerification {
				t.Error("not set")
			}
		}},
		{name: "unknown keys warn", doc: "extra = 1\n[kbc]\nname = \"cc_kbc\"\nfoo = 2\n[image]\nbar = 3\n[[image.registry_config.registry]]\nlocation = \"x\"\nqux = true\n",
			warn: []string{"unknown key extra", "unknown key kbc.foo", "unknown key image.bar", "unknown key image.registry_config.registry[0].qux"}},
		{name: "kbc missing", doc: "socket = \"x\"\n", wantErr: "field kbc: missing"},
		{name: "kbc name missing", doc: "[kbc]\nurl = \"x\"\n", wantErr: "field kbc.name: missing"},
		{name: "kbc name unknown", doc: "[kbc]\nname = \"sample_kbc\"\n", wantErr: "field kbc.name"},
		{name: "credential outside dir", doc: "[kbc]\nname = \"cc_kbc\"\n[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/etc/passwd\"\n", wantErr: "field credentials[0].path"},
		{name: "credential dotdot", doc: "[kbc]\nname = \"cc_kbc\"\n[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/run/confidential-containers/cdh/kbs/../x\"\n", wantErr: "field credentials[0].path"},
		{name: "credential prefix lookalike", doc: "[kbc]\nname = \"cc_kbc\"\n[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/run/confidential-containers/cdh/kbsx/y\"\n", wantErr: "field credentials[0].path"},
		{name: "credential uri missing", doc: "[kbc]\nname = \"cc_kbc\"\n[[credentials]]\npath = \"/run/confidential-containers/cdh/kbs/x\"\n", wantErr: "field credentials[0].resource_uri: missing"},
		{name: "bad max downloads", doc: "[kbc]\nname = \"cc_kbc\"\n[image]\nmax_concurrent_layer_downloads_per_image = -3\n", wantErr: "field image.max_concurrent_layer_downloads_per_image"},
		{name: "bad certs", doc: "[kbc]\nname = \"cc_kbc\"\n[image]\nextra_root_certificates = [1]\n", wantErr: "field image.extra_root_certificates[0]"},
		{name: "mirror without location", doc: "[kbc]\nname = \"cc_kbc\"\n[[image.registry_config.registry]]\n[[image.registry_config.registry.mirror]]\ninsecure = true\n", wantErr: "field image.registry_config.registry[0].mirror[0].location: missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, warn, err := ParseCDH([]byte(tc.doc), TOML)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameSet(warn, tc.warn) {
				t.Errorf("warnings = %q, want %q", warn, tc.warn)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestCDHFromKernelCmdline(t *testing.T) {
	cmdline := "agent.aa_kbc_params=cc_kbc::http://kbs:8080 cdh.kbs_resources=kbs:///a/b/c::/run/confidential-containers/cdh/kbs/x,bad,kbs:///d/e/f::/run/confidential-containers/cdh/kbs/y " +
		"agent.https_proxy=http://p:1 agent.image_policy_file=kbs:///default/security-policy/test agent.image_registry_auth=file:///auth.json"
	noenv := func(string) string { return "" }
	c, err := CDHFromKernelCmdline(noenv, writeCmdline(t, cmdline))
	if err != nil {
		t.Fatal(err)
	}
	if c.KBC.Name != "cc_kbc" || c.KBC.URL != "http://kbs:8080" || len(c.Credentials) != 2 || c.Credentials[1].ResourceURI != "kbs:///d/e/f" {
		t.Errorf("%+v", c)
	}
	if c.Image.ImageSecurityPolicyURI != nil {
		t.Error("policy file used without agent.enable_signature_verification=true")
	}
	if *c.Image.AuthenticatedRegistryCredentialsURI != "file:///auth.json" || *c.Image.ImagePullProxy.HTTPSProxy != "http://p:1" || c.Image.ImagePullProxy.HTTPProxy != nil {
		t.Errorf("image %+v", c.Image)
	}
	c, err = CDHFromKernelCmdline(noenv, writeCmdline(t, cmdline+" agent.enable_signature_verification=true"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Image.ImageSecurityPolicyURI == nil || *c.Image.ImageSecurityPolicyURI != "kbs:///default/security-policy/test" {
		t.Error("policy file not used with signature verification")
	}
	c, err = CDHFromKernelCmdline(noenv, writeCmdline(t, "quiet"))
	if err != nil || c.KBC.Name != "offline_fs_kbc" || c.Image.ImagePullProxy != nil {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	if _, err := CDHFromKernelCmdline(noenv, writeCmdline(t, "cdh.kbs_resources=kbs:///a/b/c::/etc/x")); err == nil {
		t.Error("credential outside the credential dir accepted")
	}
}

func FuzzParseCDH(f *testing.F) {
	for _, p := range []string{"cdh/example.config.toml", "cdh/tests-cdh.toml", "aa/config.example.toml"} {
		b, err := os.ReadFile(filepath.Join("testdata", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, _, err := ParseCDH(b, TOML); err == nil {
			for _, cr := range c.Credentials {
				if CheckCredentialPath(cr.Path) != nil {
					t.Fatalf("accepted credential path %q", cr.Path)
				}
			}
		}
		_, _, _ = ParseAA(b, TOML)
		_, _, _ = ParseAA(b, JSON)
	})
}

func TestParseRegistriesConf(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "image-rs", "registry-configuration.toml"))
	if err != nil {
		t.Fatal(err)
	}
	rc, warn, err := ParseRegistriesConf(b)
	if err != nil || len(warn) != 0 {
		t.Fatalf("%v %v", err, warn)
	}
	if len(rc.UnqualifiedSearchRegistries) != 2 || len(rc.Registries) != 4 || !rc.Registries[0].Blocked ||
		len(rc.Registries[1].Mirrors) != 1 || rc.Registries[1].Mirrors[0].Location != "127.0.0.1:5000" || !rc.Registries[3].Insecure {
		t.Errorf("parsed %+v", rc)
	}
	if _, _, err := ParseRegistriesConf([]byte("[[registry]]\nblocked = \"yes\"\n")); err == nil || !strings.Contains(err.Error(), "blocked") {
		t.Errorf("bad value: %v", err)
	}
}

// TestBooleansAsConfigCrate: aa.toml and cdh.toml are read upstream with
// the config crate, whose Value::into_bool takes booleans, numbers (true
// unless zero) and the words 1/true/on/yes, 0/false/off/no in any case,
// and nothing else. registries.conf is read with serde (booleans only),
// and the kernel command line's agent.enable_signature_verification with
// Rust's bool parsing (exactly true or false).
func TestBooleansAsConfigCrate(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    bool
		wantErr bool
	}{
		{"true", true, false},
		{"false", false, false},
		{`"true"`, true, false},
		{`"yes"`, true, false},
		{`"On"`, true, false},
		{`"TRUE"`, true, false},
		{`"1"`, true, false},
		{`"no"`, false, false},
		{`"off"`, false, false},
		{`"0"`, false, false},
		{"1", true, false},
		{"2", true, false},
		{"0", false, false},
		{"0.0", false, false},
		{"0.5", true, false},
		{`"t"`, false, true},
		{`"F"`, false, true},
		{`"maybe"`, false, true},
		{`""`, false, true},
		{"[true]", false, true},
	} {
		for _, f := range []struct {
			format Format
			doc    string
		}{
			{TOML, "[eventlog_config]\nenable_eventlog = " + tc.value + "\n"},
			{JSON, `{"eventlog_config": {"enable_eventlog": ` + tc.value + `}}`},
		} {
			c, _, err := ParseAA([]byte(f.doc), f.format)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "field eventlog_config.enable_eventlog") {
					t.Errorf("%s (%v): err = %v, want an error naming the field", tc.value, f.format, err)
				}
				continue
			}
			if err != nil || c.EventlogConfig.EnableEventlog != tc.want {
				t.Errorf("%s (%v): %v, %v, want %v", tc.value, f.format, c, err, tc.want)
			}
		}
	}
	c, _, err := ParseCDH([]byte("skip_sealed_secret_verification = \"yes\"\n[kbc]\nname = \"cc_kbc\"\n"), TOML)
	if err != nil || !c.SkipSealedSecretVerification {
		t.Errorf(`cdh.toml skip_sealed_secret_verification = "yes": %v, want true`, err)
	}

	if _, _, err := ParseRegistriesConf([]byte("[[registry]]\nlocation = \"r.example\"\ninsecure = \"true\"\n")); err == nil || !strings.Contains(err.Error(), "registry[0].insecure") {
		t.Errorf("registries.conf insecure as a string: err = %v, want an error naming the field", err)
	}

	noenv := func(string) string { return "" }
	base := "agent.image_policy_file=kbs:///default/security-policy/test agent.enable_signature_verification="
	for v, wantPolicy := range map[string]bool{"true": true, "false": false} {
		c, err := CDHFromKernelCmdline(noenv, writeCmdline(t, base+v))
		if err != nil || (c.Image.ImageSecurityPolicyURI != nil) != wantPolicy {
			t.Errorf("enable_signature_verification=%s: %v, policy applied %v", v, err, c != nil && c.Image.ImageSecurityPolicyURI != nil)
		}
	}
	for _, v := range []string{"1", "True", "TRUE", "yes", "t", ""} {
		if _, err := CDHFromKernelCmdline(noenv, writeCmdline(t, base+v)); err == nil || !strings.Contains(err.Error(), "agent.enable_signature_verification") {
			t.Errorf("enable_signature_verification=%s: err = %v, want an error naming the parameter", v, err)
		}
	}
}
