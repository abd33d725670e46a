package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Confidential Data Hub defaults (guest-components confidential-data-hub
// and image-rs config).
const (
	DefaultCDHSocket       = "unix:///run/confidential-containers/cdh.sock"
	DefaultAASocket        = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
	DefaultImageWorkDir    = "/run/kata-containers/image/"
	DefaultMaxLayerFetches = 3
	// CredentialDir is the only directory [[credentials]] may write into.
	CredentialDir = "/run/confidential-containers/cdh/kbs"
	// KBSResourcesCmdlineKey adds credentials: "<uri>::<path>,...".
	KBSResourcesCmdlineKey = "cdh.kbs_resources"
)

// KBC names CDH accepts.
var KBCNames = []string{"cc_kbc", "offline_fs_kbc"}

// CDHConfig is cdh.toml (COCO_SPEC 4.2).
type CDHConfig struct {
	Socket                       string // default DefaultCDHSocket
	SkipSealedSecretVerification bool
	AA                           AASocketConfig
	KBC                          KBCConfig
	Credentials                  []Credential
	Log                          LogConfig
	// Image is nil when the [image] section is absent; ImageFromKernelCmdline
	// then gives upstream's values.
	Image *ImageConfig
}

// AASocketConfig is [aa].
type AASocketConfig struct {
	AASocket string // default DefaultAASocket
}

// KBCConfig is [kbc].
type KBCConfig struct {
	Name    string  // required: cc_kbc or offline_fs_kbc
	URL     string  // default ""
	KBSCert *string // PEM, extra trusted root
}

// Credential is one [[credentials]] entry: a KBS resource written to Path
// at start-up.
type Credential struct {
	ResourceURI string
	Path        string
}

// ImageConfig is [image] (image-rs ImageConfig).
type ImageConfig struct {
	WorkDir                             string // default DefaultImageWorkDir
	ImageSecurityPolicyURI              *string
	ImageSecurityPolicy                 *string
	SigstoreConfigURI                   *string
	SigstoreConfig                      *string
	AuthenticatedRegistryCredentialsURI *string
	RegistryConfigurationURI            *string
	RegistryConfig                      *RegistryConfig
	MaxConcurrentLayerDownloadsPerImage uint64 // default 3
	ImagePullProxy                      *ProxyConfig
	ExtraRootCertificates               []string
	// KBC and KBSURI exist in image-rs's native key-wrap build only
	// (defaults "sample_kbc", "null"); they are accepted and kept.
	KBC    string
	KBSURI string
}

// RegistryConfig is [image.registry_config] (registries.conf subset).
type RegistryConfig struct {
	UnqualifiedSearchRegistries []string // default ["docker.io"]
	Registries                  []Registry
}

// Registry is one [[image.registry_config.registry]].
type Registry struct {
	Prefix   string
	Location string
	Insecure bool
	Blocked  bool
	Mirrors  []Mirror
}

// Mirror is one [[...registry.mirror]].
type Mirror struct {
	Location string // required
	Insecure bool
}

// ProxyConfig is [image.image_pull_proxy].
type ProxyConfig struct {
	HTTPSProxy *string
	HTTPProxy  *string
	NoProxy    *string
}

// DefaultImage is [image] with every default.
func DefaultImage() *ImageConfig {
	return &ImageConfig{
		WorkDir:                             DefaultImageWorkDir,
		MaxConcurrentLayerDownloadsPerImage: DefaultMaxLayerFetches,
		KBC:                                 "sample_kbc",
		KBSURI:                              "null",
	}
}

// LoadCDH reads cdh.toml (or a .json file).
func LoadCDH(path string) (*CDHConfig, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: read CDH config: %w", err)
	}
	c, warn, err := ParseCDH(data, FormatOf(path))
	if err != nil {
		return nil, warn, fmt.Errorf("%w (%s)", err, path)
	}
	return c, warn, nil
}

// ParseCDH parses a CDH configuration. Unknown keys become warnings naming
// the key; invalid values are errors naming the field.
func ParseCDH(data []byte, f Format) (*CDHConfig, []string, error) {
	m, err := decode(data, f)
	if err != nil {
		return nil, nil, fmt.Errorf("config: CDH: %w", err)
	}
	var warn []string
	c, err := parseCDH(newTable(m, "", &warn))
	if err != nil {
		return nil, warn, fmt.Errorf("config: CDH: %w", err)
	}
	return c, warn, nil
}

func parseCDH(root *table) (*CDHConfig, error) {
	c := &CDHConfig{Socket: DefaultCDHSocket, AA: AASocketConfig{AASocket: DefaultAASocket}}
	if err := root.str("socket", &c.Socket); err != nil {
		return nil, err
	}
	if err := root.boolean("skip_sealed_secret_verification", &c.SkipSealedSecretVerification); err != nil {
		return nil, err
	}
	aa, err := root.sub("aa")
	if err != nil {
		return nil, err
	}
	if aa != nil {
		if err := aa.str("aa_socket", &c.AA.AASocket); err != nil {
			return nil, err
		}
		aa.done()
	}
	kbc, err := root.sub("kbc")
	if err != nil {
		return nil, err
	}
	if kbc == nil {
		return nil, fmt.Errorf("field kbc: missing")
	}
	if err := kbc.requiredStr("name", &c.KBC.Name); err != nil {
		return nil, err
	}
	if !contains(KBCNames, c.KBC.Name) {
		return nil, fmt.Errorf("field kbc.name: %q is not one of %s", c.KBC.Name, strings.Join(KBCNames, ", "))
	}
	if err := kbc.str("url", &c.KBC.URL); err != nil {
		return nil, err
	}
	if err := kbc.optStr("kbs_cert", &c.KBC.KBSCert); err != nil {
		return nil, err
	}
	kbc.done()
	creds, err := root.subList("credentials")
	if err != nil {
		return nil, err
	}
	for _, t := range creds {
		var cr Credential
		if err := t.requiredStr("resource_uri", &cr.ResourceURI); err != nil {
			return nil, err
		}
		if err := t.requiredStr("path", &cr.Path); err != nil {
			return nil, err
		}
		if err := CheckCredentialPath(cr.Path); err != nil {
			return nil, fmt.Errorf("field %s: %w", t.name("path"), err)
		}
		t.done()
		c.Credentials = append(c.Credentials, cr)
	}
	lg, err := root.sub("log")
	if err != nil {
		return nil, err
	}
	if err := c.Log.load(lg); err != nil {
		return nil, err
	}
	img, err := root.sub("image")
	if err != nil {
		return nil, err
	}
	if img != nil {
		if c.Image, err = parseImage(img); err != nil {
			return nil, err
		}
	}
	root.done()
	return c, nil
}

func parseImage(t *table) (*ImageConfig, error) {
	c := DefaultImage()
	for _, f := range []struct {
		key string
		dst **string
	}{
		{"image_security_policy_uri", &c.ImageSecurityPolicyURI},
		{"image_security_policy", &c.ImageSecurityPolicy},
		{"sigstore_config_uri", &c.SigstoreConfigURI},
		{"sigstore_config", &c.SigstoreConfig},
		{"authenticated_registry_credentials_uri", &c.AuthenticatedRegistryCredentialsURI},
		{"registry_configuration_uri", &c.RegistryConfigurationURI},
	} {
		if err := t.optStr(f.key, f.dst); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{"work_dir", &c.WorkDir}, {"kbc", &c.KBC}, {"kbs_uri", &c.KBSURI}} {
		if err := t.str(f.key, f.dst); err != nil {
			return nil, err
		}
	}
	if err := t.uint("max_concurrent_layer_downloads_per_image", &c.MaxConcurrentLayerDownloadsPerImage); err != nil {
		return nil, err
	}
	if err := t.strList("extra_root_certificates", &c.ExtraRootCertificates); err != nil {
		return nil, err
	}
	proxy, err := t.sub("image_pull_proxy")
	if err != nil {
		return nil, err
	}
	if proxy != nil {
		p := &ProxyConfig{}
		for _, f := range []struct {
			key string
			dst **string
		}{{"https_proxy", &p.HTTPSProxy}, {"http_proxy", &p.HTTPProxy}, {"no_proxy", &p.NoProxy}} {
			if err := proxy.optStr(f.key, f.dst); err != nil {
				return nil, err
			}
		}
		proxy.done()
		c.ImagePullProxy = p
	}
	reg, err := t.sub("registry_config")
	if err != nil {
		return nil, err
	}
	if reg != nil {
		if c.RegistryConfig, err = parseRegistryConfig(reg); err != nil {
			return nil, err
		}
	}
	t.done()
	return c, nil
}

func parseRegistryConfig(t *table) (*RegistryConfig, error) {
	rc := &RegistryConfig{UnqualifiedSearchRegistries: []string{"docker.io"}}
	if err := t.strList("unqualified-search-registries", &rc.UnqualifiedSearchRegistries); err != nil {
		return nil, err
	}
	regs, err := t.subList("registry")
	if err != nil {
		return nil, err
	}
	for _, rt := range regs {
		var r Registry
		if err := rt.str("prefix", &r.Prefix); err != nil {
			return nil, err
		}
		if err := rt.str("location", &r.Location); err != nil {
			return nil, err
		}
		if err := rt.boolean("insecure", &r.Insecure); err != nil {
			return nil, err
		}
		if err := rt.boolean("blocked", &r.Blocked); err != nil {
			return nil, err
		}
		mirrors, err := rt.subList("mirror")
		if err != nil {
			return nil, err
		}
		for _, mt := range mirrors {
			var m Mirror
			if err := mt.requiredStr("location", &m.Location); err != nil {
				return nil, err
			}
			if err := mt.boolean("insecure", &m.Insecure); err != nil {
				return nil, err
			}
			mt.done()
			r.Mirrors = append(r.Mirrors, m)
		}
		rt.done()
		rc.Registries = append(rc.Registries, r)
	}
	t.done()
	return rc, nil
}

// CheckCredentialPath enforces CDH's rule for credential paths: under
// CredentialDir, absolute, with no "." or ".." components.
func CheckCredentialPath(p string) error {
	if !strings.HasPrefix(p, CredentialDir+"/") {
		return fmt.Errorf("credential path %q is not under %s", p, CredentialDir)
	}
	for _, comp := range strings.Split(p, "/") {
		if comp == "." || comp == ".." {
			return fmt.Errorf("credential path %q has a %q component", p, comp)
		}
	}
	return nil
}

// CredentialsFromKernelCmdline parses cdh.kbs_resources=<uri>::<path>,...
// from the kernel command line text; malformed items are skipped as
// upstream does, and paths are checked like [[credentials]].
func CredentialsFromKernelCmdline(cmdline string) ([]Credential, error) {
	v, _ := cmdlineValue(cmdline, KBSResourcesCmdlineKey)
	var out []Credential
	for _, item := range strings.Split(v, ",") {
		uri, p, ok := strings.Cut(item, "::")
		if item == "" || !ok {
			continue
		}
		if err := CheckCredentialPath(p); err != nil {
			return nil, fmt.Errorf("config: %s: %w", KBSResourcesCmdlineKey, err)
		}
		out = append(out, Credential{ResourceURI: uri, Path: p})
	}
	return out, nil
}

// ImageFromKernelCmdline is [image] when the section is absent: defaults
// plus agent.https_proxy, agent.http_proxy, agent.no_proxy,
// agent.image_registry_auth and, only with
// agent.enable_signature_verification=true, agent.image_policy_file. As
// upstream, the last occurrence of a key wins. The switch is read as
// image-rs reads it (Rust's bool parsing): only "true" enables and "false"
// disables; upstream silently takes any other value ("1", "yes", "True")
// for false, which would drop the policy without a word, so here it is an
// error naming the parameter.
func ImageFromKernelCmdline(cmdline string) (*ImageConfig, error) {
	kv := map[string]string{}
	for _, w := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(w, "="); ok {
			kv[k] = v
		}
	}
	opt := func(k string) *string {
		if v, ok := kv[k]; ok {
			return &v
		}
		return nil
	}
	c := DefaultImage()
	c.AuthenticatedRegistryCredentialsURI = opt("agent.image_registry_auth")
	switch v, ok := kv["agent.enable_signature_verification"]; {
	case !ok, v == "false":
	case v == "true":
		c.ImageSecurityPolicyURI = opt("agent.image_policy_file")
	default:
		return nil, errors.New("kernel command line: agent.enable_signature_verification must be true or false")
	}
	p := &ProxyConfig{HTTPSProxy: opt("agent.https_proxy"), HTTPProxy: opt("agent.http_proxy"), NoProxy: opt("agent.no_proxy")}
	if p.HTTPSProxy != nil || p.HTTPProxy != nil || p.NoProxy != nil {
		c.ImagePullProxy = p
	}
	return c, nil
}

// CDHFromKernelCmdline is the configuration used when CDH has no config
// file: kbc and url from aa_kbc_params (offline_fs_kbc when absent),
// credentials from cdh.kbs_resources, [image] from the command line.
func CDHFromKernelCmdline(getenv func(string) string, cmdlinePath string) (*CDHConfig, error) {
	c := &CDHConfig{
		Socket: DefaultCDHSocket,
		AA:     AASocketConfig{AASocket: DefaultAASocket},
		KBC:    KBCConfig{Name: "offline_fs_kbc"},
		Log:    LogConfig{Level: DefaultLogLevel},
	}
	p, err := KBCParamsFrom(getenv, cmdlinePath)
	switch {
	case err == nil:
		c.KBC.Name, c.KBC.URL = p.KBC, p.URL
	case errors.Is(err, ErrNoKBCParams):
	default:
		return nil, err
	}
	cmdline, err := readCmdline(cmdlinePath)
	if err != nil {
		return nil, err
	}
	if c.Credentials, err = CredentialsFromKernelCmdline(cmdline); err != nil {
		return nil, err
	}
	if c.Image, err = ImageFromKernelCmdline(cmdline); err != nil {
		return nil, err
	}
	return c, nil
}

// ParseRegistriesConf parses a registries configuration document (the
// registries.conf subset image-rs reads: unqualified-search-registries and
// [[registry]] with mirrors), as registry_configuration_uri names it.
func ParseRegistriesConf(data []byte) (*RegistryConfig, []string, error) {
	m, err := decode(data, TOML)
	if err != nil {
		return nil, nil, fmt.Errorf("config: registries configuration: %w", err)
	}
	var warn []string
	// image-rs reads this document with the toml crate (serde), not the
	// config crate: its booleans are booleans.
	t := newTable(m, "", &warn)
	t.serdeBools = true
	rc, err := parseRegistryConfig(t)
	if err != nil {
		return nil, warn, fmt.Errorf("config: registries configuration: %w", err)
	}
	return rc, warn, nil
}
