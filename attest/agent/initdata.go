package agent

import (
	"context"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/tdx"
)

// BindInitData binds an init-data digest to the platform as upstream AA does
// at start-up:
//   - tdx: MR_CONFIG_ID (read from a fresh quote) must equal the digest
//     zero-padded or truncated to 48 bytes;
//   - snp: HOST_DATA (read from a fresh report) must equal it padded or
//     truncated to 32 bytes;
//   - tpm: the digest (which must be 32 bytes: sha256) is extended into PCR8.
//
// A mismatch returns initdata.ErrInconsistent, upstream's exact message. The
// sample attester binds nothing: initdata.ErrUnsupportedTEE, which upstream
// only logs.
func BindInitData(ctx context.Context, a attest.Attester, digest []byte) error {
	switch a.TEE() {
	case attest.TEETDX:
		ev, err := a.Evidence(ctx, make([]byte, 64))
		if err != nil {
			return fmt.Errorf("bind init-data: read MR_CONFIG_ID: %w", err)
		}
		q, _, err := tdx.ParseEvidence(ev)
		if err != nil {
			return fmt.Errorf("bind init-data: %w", err)
		}
		return initdata.Check(attest.TEETDX, digest, q.GetTdQuoteBody().GetMrConfigId())
	case attest.TEESNP:
		ev, err := a.Evidence(ctx, make([]byte, 64))
		if err != nil {
			return fmt.Errorf("bind init-data: read HOST_DATA: %w", err)
		}
		e, _, err := snp.ParseEvidence(ev)
		if err != nil {
			return fmt.Errorf("bind init-data: %w", err)
		}
		return initdata.Check(attest.TEESNP, digest, e.AttestationReport.HostData)
	case attest.TEETPM:
		if len(digest) != 32 {
			return fmt.Errorf("bind init-data: a vTPM binds only a sha256 digest (32 bytes) into PCR8, got %d bytes", len(digest))
		}
		m, ok := a.(attest.RuntimeMeasurer)
		if !ok {
			return fmt.Errorf("bind init-data: tpm attester cannot extend PCR8: %w", attest.ErrNotSupported)
		}
		if err := m.ExtendRuntimeMeasurement(ctx, initdata.PCR8, digest); err != nil {
			return fmt.Errorf("bind init-data: extend PCR8: %w", err)
		}
		return nil
	}
	return initdata.ErrUnsupportedTEE
}
