// Package tdx is cocoon's Intel TDX attester and verifier. The attester
// gets a TD quote bound to caller report data through configfs-tsm, attaches
// the CCEL and Attestation Agent event log as guest-components' tdx
// attester does ({"cc_eventlog":...,"quote":...}), and extends RTMRs for
// runtime measurements through the kernel's sysfs measurement files. The
// verifier, used by the development KBS, checks the quote's PCK chain up to
// a trusted Intel root, the QE report and the quote signature with
// go-tdx-guest, checks REPORT_DATA, and returns Trustee-style claims
// (MR_CONFIG_ID is the init-data binding, exposed as "init_data").
//
// This package must never accept a quote whose signatures or certificate
// chain did not verify, and never log report data. It does not fetch Intel
// collateral (TCB info, QE identity, CRLs): TCB status is not judged here.
package tdx

import (
	"errors"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
)

const (
	// ReportDataSize is the size of REPORT_DATA; shorter report data is
	// zero-padded to it.
	ReportDataSize = 64
	// MRConfigIDSize is the size of MR_CONFIG_ID, which carries the
	// init-data digest (zero-padded or truncated to 48 bytes).
	MRConfigIDSize = 48
	// RTMRSize is the size of an RTMR (SHA-384).
	RTMRSize = 48
)

// Default paths, as guest-components uses them.
const (
	DefaultCCELPath        = "/sys/firmware/acpi/tables/data/CCEL"
	DefaultAAELPath        = "/run/attestation-agent/eventlog"
	DefaultMeasurementsDir = "/sys/devices/virtual/misc/tdx_guest/measurements"
)

// Paths probed by Available.
var availablePaths = []string{"/dev/tdx_guest", "/sys/devices/virtual/misc/tdx_guest"}

// ErrReportDataTooLong is returned when report data exceeds 64 bytes.
var ErrReportDataTooLong = errors.New("TDX Attester: Report data must be no more than 64 bytes")

// Available reports whether this machine is a TDX guest (the tdx_guest
// device or its sysfs node exists).
func Available() bool { return attest.AnyExists(availablePaths...) }

func padReportData(reportData []byte) ([ReportDataSize]byte, error) {
	padded, ok := attest.PadReportData(reportData)
	if !ok {
		return padded, ErrReportDataTooLong
	}
	return padded, nil
}

// RTMRIndex maps a PCR index, as the Attestation Agent names registers, to
// the RTMR it lands in: PCR→CCMR (1,7→1; 2–6→2; 8–15→3; anything else,
// including 0 and 17, →4), then RTMR = CCMR−1 (TD-Shim and UEFI CC
// mapping, as guest-components).
func RTMRIndex(pcr int) (int, error) {
	if pcr < 0 {
		return 0, fmt.Errorf("tdx: register %d is not a PCR index", pcr)
	}
	var ccmr int
	switch {
	case pcr == 1 || pcr == 7:
		ccmr = 1
	case pcr >= 2 && pcr <= 6:
		ccmr = 2
	case pcr >= 8 && pcr <= 15:
		ccmr = 3
	default:
		ccmr = 4
	}
	return ccmr - 1, nil
}

// MRConfigIDForInitData regularises an init-data digest to MR_CONFIG_ID's
// 48 bytes (zero-padded or truncated), as the host sets it and Trustee
// compares it.
func MRConfigIDForInitData(digest []byte) []byte {
	out := make([]byte, MRConfigIDSize)
	copy(out, digest)
	return out
}
