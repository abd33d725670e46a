// Package attest is cocoon's Attestation Agent: it produces hardware evidence
// bound to caller-chosen report data (attesters) and checks such evidence
// (verifiers, used by the development KBS). Implementations live in one
// package per TEE (attest/sample, attest/tdx, attest/snp, attest/tpm).
//
// Nothing in this package may log or persist key material or report data
// that binds a session key.
package attest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
)

// TEE names, spelled as upstream kbs-types serialises them on the wire.
const (
	TEESample = "sample"
	TEETDX    = "tdx"
	TEESNP    = "snp"
	TEETPM    = "tpm"
)

// ErrNotSupported is returned by optional capabilities an attester lacks
// (for example runtime measurement on the sample attester).
var ErrNotSupported = errors.New("not supported by this attester")

// Attester produces evidence for the TEE it runs in.
type Attester interface {
	// TEE is the upstream wire name ("sample", "tdx", "snp", "tpm").
	TEE() string
	// Evidence returns the evidence JSON (upstream's shape for this TEE)
	// with reportData bound into it, padded or refused as upstream does.
	Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error)
}

// RuntimeMeasurer is implemented by attesters that can extend a runtime
// measurement register (TDX RTMR, vTPM PCR).
type RuntimeMeasurer interface {
	// ExtendRuntimeMeasurement extends register (a PCR index as upstream
	// names it; TDX maps it to an RTMR) with digest.
	ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error
}

// InitDataBinder is implemented by attesters whose platform binds an
// init-data digest to hardware, checked or done at start-up as upstream AA
// does (TDX MR_CONFIG_ID, SNP HOST_DATA, vTPM PCR8). A mismatch is
// initdata.ErrInconsistent.
type InitDataBinder interface {
	BindInitData(ctx context.Context, digest []byte) error
}

// Platform is what a TEE package tells the rest of cocoon about its TEE
// besides evidence, for code that has only the TEE's name (a verifier, a
// CLI flag). Each TEE package registers one (RegisterPlatform, from its
// init); it implements the optional interfaces that such code looks up:
// initdata.Binding (the register init-data is bound into), eventlog.Platform
// (how runtime measurements are recorded). Adding a TEE touches its own
// package only.
type Platform interface {
	TEE() string
}

var platforms struct {
	sync.RWMutex
	byName map[string]Platform
}

// RegisterPlatform records p under its TEE name and under aliases (other
// upstream names of the same platform). It panics when a name is taken.
func RegisterPlatform(p Platform, aliases ...string) {
	platforms.Lock()
	defer platforms.Unlock()
	if platforms.byName == nil {
		platforms.byName = map[string]Platform{}
	}
	for _, name := range append([]string{p.TEE()}, aliases...) {
		if _, dup := platforms.byName[name]; dup {
			panic(fmt.Sprintf("attest: platform %q registered twice", name))
		}
		platforms.byName[name] = p
	}
}

// LookupPlatform returns the platform registered under name, or nil.
func LookupPlatform(name string) Platform {
	platforms.RLock()
	defer platforms.RUnlock()
	return platforms.byName[name]
}

// Claims are the verified facts a verifier extracts from evidence; they go
// into the token under the TEE's name.
type Claims map[string]any

// Verifier checks evidence of one TEE type. Used by the development KBS.
type Verifier interface {
	TEE() string
	// Verify checks the evidence's signatures against the verifier's trusted
	// roots and that the report data it carries equals expectedReportData
	// (compared as the TEE pads it). It returns the claims for the token.
	// Claims must include "report_data" and, when the TEE binds init-data,
	// "init_data" (hex for TDX/SNP/TPM, base64 for sample, as Trustee).
	Verify(ctx context.Context, evidence json.RawMessage, expectedReportData []byte) (Claims, error)
}

// ReportDataSize is the REPORT_DATA field of TDX and SNP reports.
const ReportDataSize = 64

// PadReportData zero-pads report data to ReportDataSize bytes, as upstream's
// TDX and SNP attesters do; ok is false when it is longer (refused).
func PadReportData(reportData []byte) (padded [ReportDataSize]byte, ok bool) {
	if len(reportData) > ReportDataSize {
		return padded, false
	}
	copy(padded[:], reportData)
	return padded, true
}

// AnyExists reports whether any of the paths exists: how attesters probe
// for their device.
func AnyExists(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
