// Package detect chooses the attester for the TEE cocoon runs in, in
// guest-components' detection order (tdx, snp, tpm; the TEEs cocoon lacks
// are skipped), falling back to the sample attester.
//
// It must never silently substitute another TEE for one the caller forced:
// a forced TEE that is not present is an error.
package detect

import (
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/tdx"
	"github.com/cocoon-cc/cocoon/attest/tpm"
)

type probe struct {
	tee       string
	available func() bool
	create    func(Options) (attest.Attester, error)
}

// Options tune the attesters created.
type Options struct {
	// AAELPath is the Attestation Agent event log put into TDX and TPM
	// evidence; empty keeps each attester's default (TDX: $AAEL_PATH or
	// /run/attestation-agent/eventlog; TPM: none).
	AAELPath string
}

// probes lists the hardware TEEs in upstream detection order.
var probes = []probe{
	{attest.TEETDX, tdx.Available, func(o Options) (attest.Attester, error) {
		return tdx.NewAttester(tdx.AttesterOptions{AAELPath: o.AAELPath})
	}},
	{attest.TEESNP, snp.Available, func(Options) (attest.Attester, error) { return snp.NewAttester(snp.AttesterOptions{}) }},
	{attest.TEETPM, tpm.Available, func(o Options) (attest.Attester, error) {
		return tpm.NewAttester(tpm.AttesterOptions{AAELPath: o.AAELPath})
	}},
}

// Attester returns the attester to use with default options. force is ""
// (detect), "sample", "tdx", "snp" or "tpm".
func Attester(force string) (attest.Attester, error) { return AttesterWith(force, Options{}) }

// AttesterWith is Attester with options.
func AttesterWith(force string, o Options) (attest.Attester, error) {
	if force == attest.TEESample {
		return sample.NewAttester(), nil
	}
	for _, p := range probes {
		if force != "" && force != p.tee {
			continue
		}
		if !p.available() {
			if force != "" {
				return nil, fmt.Errorf("detect attester: %s forced but no %s device found", force, force)
			}
			continue
		}
		a, err := p.create(o)
		if err != nil {
			return nil, fmt.Errorf("detect attester: open %s: %w", p.tee, err)
		}
		return a, nil
	}
	if force != "" {
		return nil, fmt.Errorf("detect attester: unknown TEE %q (want sample, tdx, snp or tpm)", force)
	}
	return sample.NewAttester(), nil
}
