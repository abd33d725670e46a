package server

import (
	"context"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// BenchmarkResourcePath splits a cached-token resource request into its
// server-side steps, so the cost of each shows next to the others.
func BenchmarkResourcePath(b *testing.B) {
	signer, _ := newTokenSigner(nil)
	key, _ := kbs.GenerateTEEKey("")
	now := time.Now()
	claims := earClaims(attest.TEESample, attest.Claims{"report_data": "x", "svn": "1"},
		map[string]any{"tee-pubkey": key.PublicJWK(), "nonce": "n"}, nil, initDataAbsent, now, now.Add(time.Hour))
	tok, _ := signer.sign(claims)
	verified, _ := signer.verify(tok, now)
	pe, _ := newPolicyEngine(AllowAllPolicy)
	data := map[string]any{"plugin": "resource", "resource-path": []any{"a", "b", "c"}, "query": map[string]any{}}
	pub, _ := teePubKeyFromClaims(verified)
	secret := make([]byte, 32)
	b.Run("token-verify", func(b *testing.B) {
		for b.Loop() {
			if _, err := signer.verify(tok, now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("policy-eval", func(b *testing.B) {
		for b.Loop() {
			if ok, err := pe.allow(context.Background(), verified, data); err != nil || !ok {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("jwe-encrypt-p256", func(b *testing.B) {
		for b.Loop() {
			if _, err := kbs.EncryptResponse(pub, secret); err != nil {
				b.Fatal(err)
			}
		}
	})
}
