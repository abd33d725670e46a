package agent

import (
	"context"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/initdata"
)

// BindInitData binds an init-data digest to the platform as upstream AA does
// at start-up, through the attester's attest.InitDataBinder:
//   - tdx: MR_CONFIG_ID (read from a fresh quote) must equal the digest
//     zero-padded or truncated to 48 bytes;
//   - snp: HOST_DATA (read from a fresh report) must equal it padded or
//     truncated to 32 bytes;
//   - tpm: the digest (which must be 32 bytes: sha256) is extended into PCR8.
//
// A mismatch returns initdata.ErrInconsistent, upstream's exact message. An
// attester that binds nothing (sample) returns initdata.ErrUnsupportedTEE,
// which upstream only logs.
func BindInitData(ctx context.Context, a attest.Attester, digest []byte) error {
	if b, ok := a.(attest.InitDataBinder); ok {
		return b.BindInitData(ctx, digest)
	}
	return initdata.ErrUnsupportedTEE
}

// BindInitData binds digest through the agent's attester (the package
// function BindInitData), for transports that offer it as a request.
func (a *Agent) BindInitData(ctx context.Context, digest []byte) error {
	return BindInitData(ctx, a.o.Attester, digest)
}
