package initdata

import (
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

// Binding is implemented by the attest.Platform of a TEE that binds
// init-data.
type Binding interface {
	// InitDataRegister returns the value the TEE's init-data field holds
	// when digest (not empty) is bound.
	InitDataRegister(digest []byte) ([]byte, error)
}

// ExpectedRegister returns the value the TEE's init-data field holds when
// digest is bound, as the TEE's registered platform (attest.LookupPlatform)
// says: tdx MR_CONFIG_ID (48 bytes), snp HOST_DATA (32 bytes), tpm (and
// upstream's az-snp-vtpm, az-tdx-vtpm) PCR8 after one extend from zero,
// sha256(zeros(32) || digest), which needs a 32-byte (sha256) digest. A TEE
// whose platform does not implement Binding is ErrUnsupportedTEE.
func ExpectedRegister(tee string, digest []byte) ([]byte, error) {
	if len(digest) == 0 {
		return nil, errors.New("initdata: empty digest")
	}
	b, ok := attest.LookupPlatform(tee).(Binding)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedTEE, tee)
	}
	return b.InitDataRegister(digest)
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
