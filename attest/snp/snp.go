// Package snp is cocoon's AMD SEV-SNP attester and verifier. The attester
// asks the guest firmware (configfs-tsm, else /dev/sev-guest) for an
// attestation report bound to caller report data and returns it with its
// certificate table in the exact JSON shape of guest-components' snp
// attester. The verifier, used by the development KBS, checks the VCEK/VLEK
// chain up to trusted AMD roots and the report signature with go-sev-guest,
// checks REPORT_DATA, and returns Trustee-style claims (HOST_DATA is the
// init-data binding, exposed as "init_data").
//
// This package must never accept a report whose signature or certificate
// chain did not verify, never fetch anything but AMD KDS certificates, and
// never log report data.
package snp

import (
	"errors"

	"github.com/cocoon-cc/cocoon/attest"
)

// Paths probed by Available.
var availablePaths = []string{"/sys/devices/platform/sev-guest", "/dev/sev-guest"}

// ErrReportDataTooLong is returned when report data exceeds 64 bytes.
var ErrReportDataTooLong = errors.New("SNP Attester: Report data must be no more than 64 bytes")

// Available reports whether this machine is an SEV-SNP guest (the sev-guest
// platform device that guest-components probes, or its character device).
func Available() bool { return attest.AnyExists(availablePaths...) }

// padReportData zero-pads report data to 64 bytes, refusing longer input.
func padReportData(reportData []byte) ([ReportDataSize]byte, error) {
	padded, ok := attest.PadReportData(reportData)
	if !ok {
		return padded, ErrReportDataTooLong
	}
	return padded, nil
}
