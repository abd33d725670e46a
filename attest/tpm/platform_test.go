package tpm_test

import (
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	_ "github.com/cocoon-cc/cocoon/attest/tdx" // a TEE whose Platform keeps every init_pcr
	_ "github.com/cocoon-cc/cocoon/attest/tpm"
)

// TestInitPCRAvoidsDRTMPCRs: on a vTPM (and the Azure vTPM names) the
// DRTM PCRs 17-22, which a guest cannot extend, move to PCR 23 with a
// reason; other PCRs, and every PCR on a TEE whose Platform does not say,
// stay as aa.toml asks.
func TestInitPCRAvoidsDRTMPCRs(t *testing.T) {
	for _, tc := range []struct {
		tee       string
		requested int
		want      int
		moved     bool
	}{
		{attest.TEETPM, 17, 23, true},
		{attest.TEETPM, 22, 23, true},
		{"az-snp-vtpm", 17, 23, true},
		{attest.TEETPM, 16, 16, false},
		{attest.TEETPM, 23, 23, false},
		{attest.TEETDX, 17, 17, false},
		{"no-such-tee", 17, 17, false},
	} {
		got, why := eventlog.InitPCR(tc.tee, tc.requested)
		if got != tc.want || (why != "") != tc.moved {
			t.Errorf("InitPCR(%s, %d) = %d, %q; want %d (moved %t)", tc.tee, tc.requested, got, why, tc.want, tc.moved)
		}
	}
}
