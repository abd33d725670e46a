package server_test

import (
	"encoding/json"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
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
	// The fake chain cannot be combined with Intel's collateral, so the TCB
	// level is unknown: genuine quote, hardware 32, not released by default.
	status: server.StatusWarning,
}

func TestTDXHandshake(t *testing.T) { runTEEHandshakes(t, tdxFixture) }

var snpFixture = teeFixture{
	tee: attest.TEESNP,
	pair: func(tb testing.TB, initDigest []byte, untrusted bool) (attest.Attester, attest.Verifier) {
		opts := []snptest.Option{snptest.WithoutDebug()}
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
	// A verified report from a guest whose policy forbids debugging.
	status: server.StatusAffirming,
}

func TestSNPHandshake(t *testing.T) { runTEEHandshakes(t, snpFixture) }

// A guest whose SNP policy allows debugging exposes its memory to the
// host: its evidence verifies but is only a warning, and the default policy
// releases nothing to it.
func TestSNPDebugGuestDenied(t *testing.T) {
	a, v := snptest.New(t)
	e := newEnv(t, server.Options{Policy: server.DefaultPolicy}, v)
	e.writeResource(t, "default/key/1", []byte("x"))
	c := e.client(t, a, "")
	if _, err := c.GetResource(bg, "kbs:///default/key/1"); kbsVariant(err) != server.VariantPolicyDeny {
		t.Fatalf("err = %v, want PolicyDeny", err)
	}
	tok, err := c.Token(bg)
	if err != nil {
		t.Fatal(err)
	}
	cpu := tokenClaims(t, tok)["submods"].(map[string]any)["cpu0"].(map[string]any)
	if cpu["ear.status"] != server.StatusWarning {
		t.Fatalf("ear.status %v, want warning", cpu["ear.status"])
	}
}

// extraBenchFixtures holds fixtures that need build tags (tpm: cgo).
var extraBenchFixtures []teeFixture
