//go:build cgo

package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/tpm"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

// On a vTPM, binding extends PCR8; the verifier then reports PCR8 as the
// init-data claim, equal to the value the digest predicts.
func TestBindInitDataExtendsPCR8(t *testing.T) {
	ctx := context.Background()
	a, v := tpmtest.New(t)
	digest := sha256.Sum256([]byte("version = \"0.1.0\"\n"))
	if err := BindInitData(ctx, a, digest[:]); err != nil {
		t.Fatal(err)
	}
	rd := make([]byte, 32)
	rand.Read(rd)
	ev, err := a.Evidence(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(ctx, ev, rd)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tpm.ExpectedInitDataPCR(digest[:])
	if err != nil {
		t.Fatal(err)
	}
	if claims["init_data"] != hex.EncodeToString(want) {
		t.Errorf("init_data claim = %v, want %x", claims["init_data"], want)
	}
	if err := BindInitData(ctx, a, make([]byte, 48)); err == nil {
		t.Error("a sha384 digest was bound into PCR8")
	}
}
