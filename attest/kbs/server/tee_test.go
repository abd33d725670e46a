package server_test

import (
	"encoding/json"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/snp/snptest"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
)

var tdxFixture = teeFixture{
	tee: attest.TEETDX,
	pair: func(tb testing.TB, initDigest []byte, untrusted bool) (attest.Attester, attest.Verifier) {
		var opts []tdxtest.Option
		if initDigest != nil {
			opts = append(opts, tdxtest.WithMRConfigID(initDigest))
		}
		if untrusted {
			opts = append(opts, tdxtest.WithUntrustedRoot())
		}
		return tdxtest.New(tb, opts...)
	},
	tamper: func(tb testing.TB, ev json.RawMessage) json.RawMessage { return tdxtest.Tamper(tb, ev) },
}

func TestTDXHandshake(t *testing.T) { runTEEHandshakes(t, tdxFixture) }

var snpFixture = teeFixture{
	tee: attest.TEESNP,
	pair: func(tb testing.TB, initDigest []byte, untrusted bool) (attest.Attester, attest.Verifier) {
		var opts []snptest.Option
		if initDigest != nil {
			opts = append(opts, snptest.WithHostData(initDigest))
		}
		if untrusted {
			opts = append(opts, snptest.WithUntrustedRoot())
		}
		return snptest.New(tb, opts...)
	},
	tamper: func(tb testing.TB, raw json.RawMessage) json.RawMessage {
		var ev snp.Evidence
		if err := json.Unmarshal(raw, &ev); err != nil {
			tb.Fatal(err)
		}
		ev.AttestationReport.GuestSVN ^= 1
		out, err := json.Marshal(&ev)
		if err != nil {
			tb.Fatal(err)
		}
		return out
	},
}

func TestSNPHandshake(t *testing.T) { runTEEHandshakes(t, snpFixture) }

// extraBenchFixtures holds fixtures that need build tags (tpm: cgo).
var extraBenchFixtures []teeFixture
