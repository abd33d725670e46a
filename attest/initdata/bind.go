package initdata

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
)

// Hardware field sizes the digest is regularised to.
const (
	MRConfigIDSize = 48 // TDX MR_CONFIG_ID
	HostDataSize   = 32 // SNP HOST_DATA
	// PCR8 is the vTPM PCR (SHA-256 bank) the Attestation Agent extends
	// with the digest.
	PCR8 = 8
)

// ErrInconsistent is upstream's exact message when the platform's field
// does not hold the init-data digest (the Attestation Agent exits with it).
var ErrInconsistent = errors.New("The initdata supplied by the parameter is inconsistent with that of the current platform.") //nolint:staticcheck // upstream's exact text

// ErrUnsupportedTEE is returned for TEEs that do not bind init-data (the
// sample attester); upstream only logs this.
var ErrUnsupportedTEE = errors.New("initdata: binding is not supported on this TEE")

// regularize zero-pads digest at the end or truncates it to n bytes.
func regularize(digest []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, digest)
	return out
}

// ExpectedRegister returns the value the TEE's init-data field holds when
// digest is bound: tdx MR_CONFIG_ID (48 bytes), snp HOST_DATA (32 bytes),
// tpm (and upstream's az-snp-vtpm, az-tdx-vtpm) PCR8 after one extend from
// zero, sha256(zeros(32) || digest), which needs a 32-byte (sha256) digest.
func ExpectedRegister(tee string, digest []byte) ([]byte, error) {
	if len(digest) == 0 {
		return nil, errors.New("initdata: empty digest")
	}
	switch tee {
	case attest.TEETDX:
		return regularize(digest, MRConfigIDSize), nil
	case attest.TEESNP:
		return regularize(digest, HostDataSize), nil
	case attest.TEETPM, "az-snp-vtpm", "az-tdx-vtpm":
		if len(digest) != sha256.Size {
			return nil, fmt.Errorf("initdata: tpm binds into the SHA-256 PCR bank, digest must be 32 bytes (algorithm sha256), got %d", len(digest))
		}
		var pcr [sha256.Size]byte
		h := sha256.New()
		h.Write(pcr[:])
		h.Write(digest)
		return h.Sum(nil), nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedTEE, tee)
	}
}

// Check compares the platform's field (MR_CONFIG_ID, HOST_DATA, or the PCR8
// value for tpm) with the value digest binds to. On a mismatch it returns
// ErrInconsistent. For tpm the register must be PCR8 as read when nothing
// but the init-data digest has been extended into it.
func Check(tee string, digest, register []byte) error {
	want, err := ExpectedRegister(tee, digest)
	if err != nil {
		return err
	}
	if len(register) != len(want) || subtle.ConstantTimeCompare(register, want) != 1 {
		return ErrInconsistent
	}
	return nil
}
