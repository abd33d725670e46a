package server_test

import (
	"crypto"
	"errors"
	"net/http"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/tpm"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

// A software key signing a hand-built quote is well-formed tpm evidence
// whose signature verifies with the AK it presents. A verifier trusting any
// AK passes it, so the appraisal must not: the default policy releases
// nothing to it, and only naming its AK as trusted does.
func TestForgedTPMEvidence(t *testing.T) {
	secret := []byte("tpm secret")
	forged, err := tpmtest.NewForgedAttester(nil)
	if err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, trusted ...crypto.PublicKey) *kbs.Client {
		v, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: trusted})
		if err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, server.Options{Policy: server.DefaultPolicy}, v)
		e.writeResource(t, "default/key/1", secret)
		return e.client(t, forged, "")
	}

	t.Run("any AK", func(t *testing.T) {
		c := start(t)
		_, err := c.GetResource(bg, "kbs:///default/key/1")
		var se *kbs.StatusError
		if !errors.As(err, &se) || se.Status != http.StatusUnauthorized || kbsVariant(err) != server.VariantPolicyDeny {
			t.Fatalf("forged evidence: err = %v, want 401 PolicyDeny", err)
		}
		tok, err := c.Token(bg)
		if err != nil {
			t.Fatal(err)
		}
		cpu := tokenClaims(t, tok)["submods"].(map[string]any)["cpu0"].(map[string]any)
		if cpu["ear.status"] != server.StatusContraindicated {
			t.Fatalf("ear.status = %v, want contraindicated", cpu["ear.status"])
		}
		if tv := cpu["ear.trustworthiness-vector"].(map[string]any); tv["hardware"] != float64(97) {
			t.Fatalf("trust vector %v, want hardware 97", tv)
		}
	})
	t.Run("AK trusted elsewhere", func(t *testing.T) {
		other, err := tpmtest.NewForgedAttester(nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = start(t, other.AKPublic()).GetResource(bg, "kbs:///default/key/1")
		if kbsVariant(err) != server.VariantAttestation {
			t.Fatalf("err = %v, want AttestationError", err)
		}
	})
	t.Run("AK trusted", func(t *testing.T) {
		got, err := start(t, forged.AKPublic()).GetResource(bg, "kbs:///default/key/1")
		if err != nil || string(got) != string(secret) {
			t.Fatalf("resource %q, %v", got, err)
		}
	})
}
