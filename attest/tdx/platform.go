package tdx

import (
	"context"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/initdata"
)

func init() { attest.RegisterPlatform(Platform{}) }

// Platform is TDX's attest.Platform: init-data is bound in MR_CONFIG_ID;
// AAEL entries are measured with the CCEL's SHA-384 and recorded under the
// CC measurement register a PCR maps to.
type Platform struct{}

// TEE returns "tdx".
func (Platform) TEE() string { return attest.TEETDX }

// InitDataRegister is MR_CONFIG_ID for digest (see MRConfigIDForInitData).
func (Platform) InitDataRegister(digest []byte) ([]byte, error) {
	return MRConfigIDForInitData(digest), nil
}

// EventLogAlg is SHA-384.
func (Platform) EventLogAlg() eventlog.Alg { return eventlog.SHA384 }

// EventLogMRIndex is the CC measurement register (RTMR + 1) of a PCR.
func (Platform) EventLogMRIndex(pcr int) (uint32, error) {
	rtmr, err := RTMRIndex(pcr)
	if err != nil {
		return 0, err
	}
	return uint32(rtmr + 1), nil
}

// BindInitData checks that MR_CONFIG_ID, read from a fresh quote, holds
// digest; a mismatch is initdata.ErrInconsistent.
func (a *Attester) BindInitData(ctx context.Context, digest []byte) error {
	ev, err := a.Evidence(ctx, make([]byte, 64))
	if err != nil {
		return fmt.Errorf("bind init-data: read MR_CONFIG_ID: %w", err)
	}
	q, _, err := ParseEvidence(ev)
	if err != nil {
		return fmt.Errorf("bind init-data: %w", err)
	}
	return initdata.Check(attest.TEETDX, digest, q.GetTdQuoteBody().GetMrConfigId())
}
