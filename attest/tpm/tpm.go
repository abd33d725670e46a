// Package tpm is cocoon's TPM 2.0 (vTPM) attester and verifier. The
// attester quotes the SHA-256 PCR bank with an attestation key (AK) and the
// caller's report data as qualifying data, and returns the evidence JSON of
// guest-components' tpm attester; it also extends PCRs (runtime
// measurements, and the init-data digest into PCR8). The verifier, used by
// the development KBS, checks the quote signature with the AK in the
// evidence, the nonce and the PCR digest, and returns Trustee-style claims
// ("init_data" is PCR8, which a KBS compares with ExpectedInitDataPCR).
//
// With AttesterOptions.AAELPath the evidence also carries the Attestation
// Agent event log as "aa_eventlog" (a cocoon extension: upstream's tpm
// attester sends none); the verifier then requires it to replay to the
// quoted PCRs its records name (and to VerifierOptions.AAELPCRs) and
// claims its entries as "aa_eventlog", shaped like Trustee's event-log
// entries. The attester also reads PCRs back (eventlog.RegisterReader).
// Note that PCR 17, upstream's default init_pcr, is a DRTM PCR that
// locality 0 cannot extend on a TCG PC Client TPM; use an application PCR
// (23) as init_pcr on such TPMs.
//
// This package must never accept a quote whose signature, nonce or PCR
// digest does not check, and never claim an AK is trusted unless it is one
// of the configured keys. It must not import the TPM simulator (cgo); only
// tpmtest does.
package tpm

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
)

const (
	// ReportDataSize is the size report data is resized to (truncated or
	// zero-padded) before it becomes the quote's qualifying data. Upstream
	// guest-components and Trustee use 32 bytes, the SHA-256 digest size
	// (guest-components commit 79554cf8).
	ReportDataSize = 32
	// InitDataPCR is the PCR the init-data digest is extended into.
	InitDataPCR = 8
	// NumPCRs is the number of PCRs in a bank; upstream quotes all of them.
	NumPCRs = 24
)

// Device paths tried, in order, when no TPM is given.
var devicePaths = []string{"/dev/tpmrm0", "/dev/tpm0"}

// Available reports whether a TPM character device exists.
func Available() bool { return attest.AnyExists(devicePaths...) }

// resizeReportData truncates or zero-pads report data to ReportDataSize.
func resizeReportData(reportData []byte) []byte {
	out := make([]byte, ReportDataSize)
	copy(out, reportData)
	return out
}

// ExpectedInitDataPCR returns the PCR8 value of a TPM whose PCR8 was
// extended exactly once, with the SHA-256 init-data digest, from its reset
// value: SHA-256(0^32 || digest), as Trustee computes it.
func ExpectedInitDataPCR(initDataDigest []byte) ([]byte, error) {
	if len(initDataDigest) != sha256.Size {
		return nil, fmt.Errorf("tpm: init-data digest is %d bytes, must be a 32-byte SHA-256 digest", len(initDataDigest))
	}
	h := sha256.New()
	h.Write(make([]byte, sha256.Size))
	h.Write(initDataDigest)
	return h.Sum(nil), nil
}

// ErrBadRegister is returned for a PCR index outside 0..23.
var ErrBadRegister = errors.New("tpm: PCR index out of bounds")
