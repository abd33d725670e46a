package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Attestation Agent defaults (guest-components attestation-agent config).
const (
	DefaultInitPCR         = 17
	DefaultLogLevel        = "info"
	DefaultTEEKeyAlgorithm = "ECDH-ES+A256KW-P256"
	// DefaultCmdlinePath is where the kernel command line is read from.
	DefaultCmdlinePath = "/proc/cmdline"
	// KBCParamsEnv and KBCParamsCmdlineKey carry "<kbc>::<url>".
	KBCParamsEnv        = "AA_KBC_PARAMS"
	KBCParamsCmdlineKey = "agent.aa_kbc_params"
)

// TEEKeyAlgorithms are the accepted [token_configs.kbs] tee_key_algorithm
// values (ML-KEM-768+A192KW exists only in upstream's experimental build).
var TEEKeyAlgorithms = []string{"ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256"}

// AAConfig is aa.toml (COCO_SPEC 2.4).
type AAConfig struct {
	TokenConfigs   TokenConfigs
	EventlogConfig EventlogConfig
	Log            LogConfig
}

// TokenConfigs is [token_configs]; a nil member is an unconfigured token
// type.
type TokenConfigs struct {
	KBS    *KBSTokenConfig
	CoCoAS *CoCoASTokenConfig
}

// KBSTokenConfig is [token_configs.kbs].
type KBSTokenConfig struct {
	URL             string  // required
	Cert            *string // extra trusted root PEM for an HTTPS KBS
	TEEKeyAlgorithm string  // default DefaultTEEKeyAlgorithm
}

// CoCoASTokenConfig is [token_configs.coco_as].
type CoCoASTokenConfig struct {
	URL string // required
}

// EventlogConfig is [eventlog_config].
type EventlogConfig struct {
	InitPCR        uint64 // default 17
	EnableEventlog bool   // default false
}

// LogConfig is [log].
type LogConfig struct {
	Level string // default "info"
}

var knownLevels = []string{"trace", "debug", "info", "warn", "error", "off"}

func (l *LogConfig) load(t *table) error {
	l.Level = DefaultLogLevel
	if t == nil {
		return nil
	}
	if err := t.str("level", &l.Level); err != nil {
		return err
	}
	if !contains(knownLevels, strings.ToLower(l.Level)) {
		*t.warn = append(*t.warn, fmt.Sprintf("%s: unrecognised level %q", t.name("level"), l.Level))
	}
	t.done()
	return nil
}

// DefaultAA returns the configuration upstream uses when a config file
// exists but sets nothing.
func DefaultAA() *AAConfig {
	return &AAConfig{
		EventlogConfig: EventlogConfig{InitPCR: DefaultInitPCR},
		Log:            LogConfig{Level: DefaultLogLevel},
	}
}

// LoadAA reads aa.toml (or aa.json: the extension picks the syntax).
func LoadAA(path string) (*AAConfig, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: read AA config: %w", err)
	}
	c, warn, err := ParseAA(data, FormatOf(path))
	if err != nil {
		return nil, warn, fmt.Errorf("%w (%s)", err, path)
	}
	return c, warn, nil
}

// ParseAA parses an AA configuration. Unknown keys become warnings naming
// the key; invalid values are errors naming the field.
func ParseAA(data []byte, f Format) (*AAConfig, []string, error) {
	m, err := decode(data, f)
	if err != nil {
		return nil, nil, fmt.Errorf("config: AA: %w", err)
	}
	var warn []string
	c, err := parseAA(newTable(m, "", &warn))
	if err != nil {
		return nil, warn, fmt.Errorf("config: AA: %w", err)
	}
	return c, warn, nil
}

func parseAA(root *table) (*AAConfig, error) {
	c := DefaultAA()
	tc, err := root.sub("token_configs")
	if err != nil {
		return nil, err
	}
	if tc != nil {
		kbs, err := tc.sub("kbs")
		if err != nil {
			return nil, err
		}
		if kbs != nil {
			k := &KBSTokenConfig{TEEKeyAlgorithm: DefaultTEEKeyAlgorithm}
			if err := kbs.requiredStr("url", &k.URL); err != nil {
				return nil, err
			}
			if err := kbs.optStr("cert", &k.Cert); err != nil {
				return nil, err
			}
			if err := kbs.str("tee_key_algorithm", &k.TEEKeyAlgorithm); err != nil {
				return nil, err
			}
			if !contains(TEEKeyAlgorithms, k.TEEKeyAlgorithm) {
				return nil, fmt.Errorf("field %s: %q is not one of %s", kbs.name("tee_key_algorithm"), k.TEEKeyAlgorithm, strings.Join(TEEKeyAlgorithms, ", "))
			}
			kbs.done()
			c.TokenConfigs.KBS = k
		}
		as, err := tc.sub("coco_as")
		if err != nil {
			return nil, err
		}
		if as != nil {
			a := &CoCoASTokenConfig{}
			if err := as.requiredStr("url", &a.URL); err != nil {
				return nil, err
			}
			as.done()
			c.TokenConfigs.CoCoAS = a
		}
		tc.done()
	}
	el, err := root.sub("eventlog_config")
	if err != nil {
		return nil, err
	}
	if el != nil {
		if err := el.uint("init_pcr", &c.EventlogConfig.InitPCR); err != nil {
			return nil, err
		}
		if err := el.boolean("enable_eventlog", &c.EventlogConfig.EnableEventlog); err != nil {
			return nil, err
		}
		el.done()
	}
	lg, err := root.sub("log")
	if err != nil {
		return nil, err
	}
	if err := c.Log.load(lg); err != nil {
		return nil, err
	}
	root.done()
	return c, nil
}

// KBCParams is the "<kbc>::<url>" pair of AA_KBC_PARAMS or
// agent.aa_kbc_params.
type KBCParams struct {
	KBC string
	URL string
}

// ParseKBCParams splits "<kbc>::<url>"; exactly one "::" is allowed.
func ParseKBCParams(v string) (KBCParams, error) {
	parts := strings.Split(v, "::")
	if len(parts) != 2 {
		return KBCParams{}, fmt.Errorf("config: illegal aa_kbc_params format: %q", v)
	}
	return KBCParams{KBC: parts[0], URL: parts[1]}, nil
}

// ErrNoKBCParams means neither the environment nor the kernel command line
// carries aa_kbc_params.
var ErrNoKBCParams = errors.New("config: no AA_KBC_PARAMS and no agent.aa_kbc_params in the kernel command line")

// KBCParamsFrom reads AA_KBC_PARAMS through getenv (os.Getenv when nil),
// else the first agent.aa_kbc_params= on the kernel command line at
// cmdlinePath (DefaultCmdlinePath when empty).
func KBCParamsFrom(getenv func(string) string, cmdlinePath string) (KBCParams, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	if v := getenv(KBCParamsEnv); v != "" {
		return ParseKBCParams(v)
	}
	cmdline, err := readCmdline(cmdlinePath)
	if err != nil {
		return KBCParams{}, err
	}
	v, ok := cmdlineValue(cmdline, KBCParamsCmdlineKey)
	if !ok {
		return KBCParams{}, ErrNoKBCParams
	}
	return ParseKBCParams(v)
}

// AAFromKernelCmdline is the configuration used when AA has no config
// file: defaults, plus [token_configs.kbs] url from aa_kbc_params when its
// kbc is cc_kbc. As upstream, missing or malformed parameters, or another
// kbc, leave KBS unset; the reason is returned as a warning.
func AAFromKernelCmdline(getenv func(string) string, cmdlinePath string) (*AAConfig, []string) {
	c := DefaultAA()
	p, err := KBCParamsFrom(getenv, cmdlinePath)
	if err != nil {
		return c, []string{err.Error() + "; no KBS token configuration"}
	}
	if p.KBC != "cc_kbc" {
		return c, []string{fmt.Sprintf("aa_kbc_params kbc is %q, not cc_kbc; no KBS token configuration", p.KBC)}
	}
	c.TokenConfigs.KBS = &KBSTokenConfig{URL: p.URL, TEEKeyAlgorithm: DefaultTEEKeyAlgorithm}
	return c, nil
}

func readCmdline(path string) (string, error) {
	if path == "" {
		path = DefaultCmdlinePath
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("config: read kernel command line: %w", err)
	}
	return string(b), nil
}

// cmdlineValue returns the value of the first key=value word with key.
func cmdlineValue(cmdline, key string) (string, bool) {
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
