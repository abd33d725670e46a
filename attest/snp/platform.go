package snp

import (
	"context"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/initdata"
)

func init() { attest.RegisterPlatform(Platform{}) }

// Platform is SNP's attest.Platform: init-data is bound in HOST_DATA; SNP
// has no runtime measurement register.
type Platform struct{}

// TEE returns "snp".
func (Platform) TEE() string { return attest.TEESNP }

// InitDataRegister is HOST_DATA for digest (see HostDataForInitData).
func (Platform) InitDataRegister(digest []byte) ([]byte, error) {
	return HostDataForInitData(digest), nil
}

// BindInitData checks that HOST_DATA, read from a fresh report, holds
// digest; a mismatch is initdata.ErrInconsistent.
func (a *Attester) BindInitData(ctx context.Context, digest []byte) error {
	ev, err := a.Evidence(ctx, make([]byte, 64))
	if err != nil {
		return fmt.Errorf("bind init-data: read HOST_DATA: %w", err)
	}
	e, _, err := ParseEvidence(ev)
	if err != nil {
		return fmt.Errorf("bind init-data: %w", err)
	}
	return initdata.Check(attest.TEESNP, digest, e.AttestationReport.HostData)
}
