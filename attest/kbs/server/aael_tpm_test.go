//go:build cgo

package server_test

import (
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

// TestTPMAAEL runs the flow on the TPM simulator. Upstream's init_pcr 17
// is a DRTM PCR that locality 0 may not extend, so the simulator (like a
// TPM behind the Linux driver) refuses it (attest/tpm TestAAELInitPCR17);
// the AAEL uses PCR 23, the application PCR. An emptied log is refused
// only by a verifier told the AAEL's PCR (tpm.VerifierOptions.AAELPCRs).
func TestTPMAAEL(t *testing.T) {
	const pcr = 23
	runAAEL(t, aaelFixture{
		tee:     attest.TEETPM,
		alg:     eventlog.SHA256,
		initPCR: pcr,
		pair: func(t *testing.T, aaelPath string, reserve bool) (attest.Attester, attest.Verifier) {
			opts := []tpmtest.Option{tpmtest.WithAAELPath(aaelPath)}
			if reserve {
				opts = append(opts, tpmtest.WithAAELPCRs(pcr))
			}
			return tpmtest.New(t, opts...)
		},
		eventsClaim: "aa_eventlog",
		index:       pcr,
		wantErr: map[string]string{
			"content changed after extend": "aa_eventlog event 0 (PCR 23): entry",
			"last record truncated":        "aa_eventlog does not replay to PCR 23",
			"record cut mid-way":           "parse aa_eventlog",
			"log emptied":                  "aa_eventlog does not replay to PCR 23",
		},
	})
}
