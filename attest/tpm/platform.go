package tpm

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/initdata"
)

// Upstream's Azure vTPM attesters bind init-data and measure like a vTPM.
func init() { attest.RegisterPlatform(Platform{}, "az-snp-vtpm", "az-tdx-vtpm") }

// Platform is the vTPM's attest.Platform: init-data is extended into PCR8;
// AAEL entries are measured with SHA-256 and recorded under the PCR itself.
type Platform struct{}

// TEE returns "tpm".
func (Platform) TEE() string { return attest.TEETPM }

// InitDataRegister is PCR8 after one extend with digest, which must be a
// SHA-256 digest (see ExpectedInitDataPCR).
func (Platform) InitDataRegister(digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("initdata: tpm binds into the SHA-256 PCR bank, digest must be 32 bytes (algorithm sha256), got %d", len(digest))
	}
	return ExpectedInitDataPCR(digest)
}

// EventLogAlg is SHA-256.
func (Platform) EventLogAlg() eventlog.Alg { return eventlog.SHA256 }

// EventLogMRIndex is the PCR itself.
func (Platform) EventLogMRIndex(pcr int) (uint32, error) { return uint32(pcr), nil }

// EventLogInitPCR moves PCRs 17-22 to 23: they are DRTM PCRs that only
// locality 4 may extend, so a guest's TPM refuses, and upstream's default
// init_pcr (17) cannot work on a vTPM.
func (Platform) EventLogInitPCR(requested int) (int, string) {
	if requested >= 17 && requested <= 22 {
		return 23, "init_pcr is a DRTM PCR a guest cannot extend on a TPM; using PCR 23"
	}
	return requested, ""
}

// BindInitData extends PCR8 with digest, which must be a SHA-256 digest.
func (a *Attester) BindInitData(ctx context.Context, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("bind init-data: a vTPM binds only a sha256 digest (32 bytes) into PCR8, got %d bytes", len(digest))
	}
	if err := a.ExtendRuntimeMeasurement(ctx, initdata.PCR8, digest); err != nil {
		return fmt.Errorf("bind init-data: extend PCR8: %w", err)
	}
	return nil
}
