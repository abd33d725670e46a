package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/attest/agentpolicy"
	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/detect"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// attestation is the trusted configuration and the clients built from it:
// the attester, init-data (bound to the hardware), upstream aa.toml and
// cdh.toml, the agent policy, the AAEL event log, and the KBS clients.
type attestation struct {
	attester attest.Attester
	initData *initdata.Document // nil without init-data
	aa       *config.AAConfig
	cdh      *config.CDHConfig // nil without cdh.toml
	policy   *agentpolicy.Policy
	eventLog *eventlog.Log // nil unless aa.toml enables it
	kbsCfg   *kbs.Config   // AA's [token_configs.kbs]; nil without a KBS
	cocoAS   string
	kbs      *kbs.Client // CDH's resource client (cached token); nil without a KBS
}

// needed reports whether the configuration asks for anything attestation
// provides.
func (c AttestationConfig) needed(cfg *Config) bool {
	return cfg.Serves(ServeREST) || cfg.Serves(ServeAA) || cfg.Serves(ServeCDH) ||
		c.InitData != "" || c.AAConfig != "" || c.CDHConfig != "" || c.KBSURL != ""
}

// detectAttester picks the attester; tests substitute fake hardware.
var detectAttester = func(force, aaelPath string) (attest.Attester, error) {
	return detect.AttesterWith(force, detect.Options{AAELPath: aaelPath})
}

// aaelFile is the AAEL log inside the event log directory (eventlog.Open's).
const aaelFile = "eventlog"

func newAttestation(ctx context.Context, cfg AttestationConfig) (*attestation, error) {
	a, err := detectAttester(cfg.TEE, filepath.Join(cfg.EventlogDir, aaelFile))
	if err != nil {
		return nil, err
	}
	at := &attestation{attester: a}
	log.G(ctx).WithField("tee", a.TEE()).Info("attester selected")
	if cfg.InitData != "" {
		if err := at.loadInitData(ctx, cfg.InitData); err != nil {
			return nil, err
		}
	}
	if err := at.loadConfigs(ctx, cfg); err != nil {
		return nil, err
	}
	if err := at.kbsClients(cfg); err != nil {
		return nil, err
	}
	if at.aa.EventlogConfig.EnableEventlog {
		if err := at.openEventLog(ctx, cfg.EventlogDir); err != nil {
			return nil, err
		}
	}
	return at, nil
}

// loadInitData reads init-data (TOML, or Kata's block-device form) and
// binds its digest to the TEE: a mismatch refuses to start.
func (at *attestation) loadInitData(ctx context.Context, path string) error {
	a := at.attester
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("init-data: %w", err)
	}
	if bytes.HasPrefix(raw, []byte(initdata.DeviceMagic)) {
		// Kata's block-device form (the file is the device or its image).
		if raw, err = initdata.DecodeDevice(bytes.NewReader(raw)); err != nil {
			return fmt.Errorf("init-data device %s: %w", path, err)
		}
	}
	if at.initData, err = initdata.Parse(raw); err != nil {
		return fmt.Errorf("init-data %s: %w", path, err)
	}
	switch err := agent.BindInitData(ctx, a, at.initData.Digest()); {
	case errors.Is(err, initdata.ErrUnsupportedTEE):
		log.G(ctx).WithField("tee", a.TEE()).Warn("init-data is not bound to hardware on this TEE (as upstream, only logged)")
	case err != nil:
		return err // upstream's message for a mismatch
	default:
		log.G(ctx).WithFields(log.Fields{"tee": a.TEE(), "algorithm": at.initData.Algorithm}).Info("init-data digest bound to the TEE")
	}
	return nil
}

// initDataText is one of init-data's documents ("" without init-data).
func (at *attestation) initDataText(key string) string {
	if at.initData == nil {
		return ""
	}
	return at.initData.Data[key]
}

// loadConfigs reads aa.toml and cdh.toml (files given, else init-data's)
// and compiles init-data's agent policy.
func (at *attestation) loadConfigs(ctx context.Context, cfg AttestationConfig) error {
	aaText, cdhText := at.initDataText(initdata.KeyAAConfig), at.initDataText(initdata.KeyCDHConfig)
	var warnings []string
	var err error
	switch {
	case cfg.AAConfig != "":
		at.aa, warnings, err = config.LoadAA(cfg.AAConfig)
	case aaText != "":
		at.aa, warnings, err = config.ParseAA([]byte(aaText), config.TOML)
	default:
		at.aa = config.DefaultAA()
	}
	if err != nil {
		return fmt.Errorf("aa.toml: %w", err)
	}
	var w []string
	switch {
	case cfg.CDHConfig != "":
		at.cdh, w, err = config.LoadCDH(cfg.CDHConfig)
	case cdhText != "":
		at.cdh, w, err = config.ParseCDH([]byte(cdhText), config.TOML)
	}
	if err != nil {
		return fmt.Errorf("cdh.toml: %w", err)
	}
	for _, w := range append(warnings, w...) {
		log.G(ctx).Warn(w)
	}
	if policyText := at.initDataText(initdata.KeyPolicy); policyText != "" {
		if at.policy, err = agentpolicy.New(policyText); err != nil {
			return fmt.Errorf("init-data policy.rego: %w", err)
		}
		log.G(ctx).Info("agent policy from init-data compiled")
	}
	return nil
}

// kbsClients sets up the Attestation Agent's KBS (aa.toml, else cocoond's
// kbs_url) and the Confidential Data Hub's resource client (cdh.toml
// [kbc], else the AA's).
func (at *attestation) kbsClients(cfg AttestationConfig) error {
	a := at.attester
	var initTOML []byte
	if at.initData != nil {
		initTOML = at.initData.Raw
	}
	if k := at.aa.TokenConfigs.KBS; k != nil {
		at.kbsCfg = &kbs.Config{URL: k.URL, TEEKeyAlgorithm: k.TEEKeyAlgorithm, Attester: a, InitDataTOML: initTOML}
		if k.Cert != nil {
			at.kbsCfg.CertPEM = []byte(*k.Cert)
		}
	} else if cfg.KBSURL != "" {
		at.kbsCfg = &kbs.Config{URL: cfg.KBSURL, TEEKeyAlgorithm: cfg.TEEKeyAlgorithm, Attester: a, InitDataTOML: initTOML}
		if cfg.KBSCertFile != "" {
			var err error
			if at.kbsCfg.CertPEM, err = os.ReadFile(cfg.KBSCertFile); err != nil {
				return fmt.Errorf("attestation.kbs_cert_file: %w", err)
			}
		}
	}
	if at.aa.TokenConfigs.CoCoAS != nil {
		at.cocoAS = at.aa.TokenConfigs.CoCoAS.URL
	}
	resCfg := at.kbsCfg
	if at.cdh != nil && at.cdh.KBC.URL != "" {
		resCfg = &kbs.Config{URL: at.cdh.KBC.URL, Attester: a, InitDataTOML: initTOML}
		if at.cdh.KBC.KBSCert != nil {
			resCfg.CertPEM = []byte(*at.cdh.KBC.KBSCert)
		}
	}
	if resCfg != nil {
		var err error
		if at.kbs, err = kbs.NewClient(*resCfg); err != nil {
			return fmt.Errorf("kbs client: %w", err)
		}
	}
	return nil
}

// openEventLog opens (and recovers) the AAEL event log aa.toml enables,
// when the TEE has a runtime measurement register.
func (at *attestation) openEventLog(ctx context.Context, dir string) error {
	a := at.attester
	m, ok := a.(attest.RuntimeMeasurer)
	alg, algErr := eventlog.AlgForTEE(a.TEE())
	if !ok || algErr != nil {
		log.G(ctx).WithField("tee", a.TEE()).Warn("aa.toml enables the event log, but this TEE has no runtime measurement register")
		return nil
	}
	initPCR, why := eventlog.InitPCR(a.TEE(), int(at.aa.EventlogConfig.InitPCR))
	if why != "" {
		log.G(ctx).WithField("init_pcr", at.aa.EventlogConfig.InitPCR).Warn("aa.toml " + why)
	}
	var err error
	if at.eventLog, err = eventlog.Open(ctx, dir, alg, initPCR, m); err != nil {
		return err
	}
	if filepath.Join(dir, aaelFile) != at.eventLog.Path() {
		return fmt.Errorf("event log at %s, but the attester reads %s", at.eventLog.Path(), filepath.Join(dir, aaelFile))
	}
	log.G(ctx).WithFields(log.Fields{"path": at.eventLog.Path(), "init_pcr": initPCR}).Info("AAEL event log enabled")
	return nil
}

// agent returns the Attestation Agent service the REST shim serves.
func (at *attestation) agent() (*agent.Agent, error) {
	o := agent.Options{Attester: at.attester, KBS: at.kbsCfg, CoCoASURL: at.cocoAS}
	switch {
	case at.eventLog != nil:
		o.EventLog = at.eventLog
	case at.aa.EventlogConfig.EnableEventlog:
		// Enabled on a TEE without a runtime measurement register:
		// upstream AA opens its log all the same and answers each
		// extension NotSupported, not NotEnabled.
		o.EventLog = noRegisterLog{}
	}
	return agent.New(o)
}

// noRegisterLog is the event log of a TEE that cannot extend a runtime
// measurement register.
type noRegisterLog struct{}

func (noRegisterLog) Extend(context.Context, string, string, string, *int) error {
	return attest.ErrNotSupported
}

// resources is the CDH resource getter (noKBS when none is configured).
func (at *attestation) resources() kbs.ResourceGetter {
	if at.kbs == nil {
		return noKBS{}
	}
	return at.kbs
}

// noKBS answers resource requests when no KBS is configured.
type noKBS struct{}

func (noKBS) GetResource(context.Context, string) ([]byte, error) {
	return nil, errors.New("no KBS configured (set --kbs-url, aa.toml [token_configs.kbs] or cdh.toml [kbc])")
}
