//go:build cgo

package server_test

import (
	"encoding/json"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

var tpmFixture = teeFixture{
	tee: attest.TEETPM,
	pair: func(tb testing.TB, initDigest []byte, untrusted bool) (attest.Attester, attest.Verifier) {
		var opts []tpmtest.Option
		if initDigest != nil {
			opts = append(opts, tpmtest.WithInitData(initDigest))
		}
		if untrusted {
			opts = append(opts, tpmtest.WithUntrustedAK())
		}
		return tpmtest.New(tb, opts...)
	},
	tamper: func(tb testing.TB, ev json.RawMessage) json.RawMessage { return tpmtest.Tamper(tb, ev) },
	// The verifier trusts the simulator's AK.
	status: server.StatusAffirming,
}

func TestTPMHandshake(t *testing.T) { runTEEHandshakes(t, tpmFixture) }

func init() { extraBenchFixtures = append(extraBenchFixtures, tpmFixture) }
