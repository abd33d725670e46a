package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
)

// teeFixture builds a fake-hardware attester and a verifier for one TEE.
type teeFixture struct {
	tee string
	// pair returns an attester whose evidence binds initDigest (nil: none)
	// and a verifier trusting its root, or a wrong root when untrusted.
	pair func(tb testing.TB, initDigest []byte, untrusted bool) (attest.Attester, attest.Verifier)
	// tamper flips a signed bit of evidence.
	tamper func(tb testing.TB, ev json.RawMessage) json.RawMessage
	// status is the EAR status the fake hardware's evidence is appraised
	// to. The default policy releases only to "affirming"; for any other
	// status the handshake test expects PolicyDeny from the default policy
	// and the resource from AllowAllPolicy.
	status string
}

// tamperingAttester corrupts the evidence of the attester it wraps.
type tamperingAttester struct {
	attest.Attester
	tb     testing.TB
	tamper func(testing.TB, json.RawMessage) json.RawMessage
}

func (a tamperingAttester) Evidence(ctx context.Context, rd []byte) (json.RawMessage, error) {
	ev, err := a.Attester.Evidence(ctx, rd)
	if err != nil {
		return nil, err
	}
	return a.tamper(a.tb, ev), nil
}

const testInitData = `version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://127.0.0.1:8080"
'''
"note" = "bound"
`

func runTEEHandshakes(t *testing.T, f teeFixture) {
	secret := []byte("tee secret")
	newEnvFor := func(t *testing.T, v attest.Verifier) *env {
		// Trustee's default policy: hardware TEEs are allowed.
		e := newEnv(t, server.Options{Policy: server.DefaultPolicy}, v)
		e.writeResource(t, "default/key/1", secret)
		return e
	}
	clientFor := func(t *testing.T, e *env, a attest.Attester, initData []byte) *kbs.Client {
		c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: a, InitDataTOML: initData, Now: e.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	digest := sha256.Sum256([]byte(testInitData))

	t.Run("handshake", func(t *testing.T) {
		a, v := f.pair(t, nil, false)
		e := newEnvFor(t, v)
		c := clientFor(t, e, a, nil)
		got, err := c.GetResource(bg, "kbs:///default/key/1")
		if f.status == server.StatusAffirming {
			if err != nil || string(got) != string(secret) {
				t.Fatalf("resource %q, %v", got, err)
			}
		} else {
			if kbsVariant(err) != server.VariantPolicyDeny {
				t.Fatalf("%s evidence under the default policy: err = %v, want PolicyDeny", f.status, err)
			}
			open := newEnv(t, server.Options{Policy: server.AllowAllPolicy}, v)
			open.writeResource(t, "default/key/1", secret)
			got, err := clientFor(t, open, a, nil).GetResource(bg, "kbs:///default/key/1")
			if err != nil || string(got) != string(secret) {
				t.Fatalf("allow-all policy: resource %q, %v", got, err)
			}
		}
		tok, _ := c.Token(bg)
		claims := tokenClaims(t, tok)
		if st := claims["submods"].(map[string]any)["cpu0"].(map[string]any)["ear.status"]; st != f.status {
			t.Fatalf("ear.status %v, want %s", st, f.status)
		}
		ae := annotated(t, claims)
		if _, ok := ae[f.tee].(map[string]any); !ok {
			t.Fatalf("token lacks %s claims: %v", f.tee, ae)
		}
		if _, ok := ae["report_data"].(string); !ok {
			t.Fatal("token lacks report_data")
		}
		if _, ok := ae["runtime_data_claims"].(map[string]any); !ok {
			t.Fatal("token lacks runtime_data_claims")
		}
	})
	t.Run("init-data bound", func(t *testing.T) {
		a, v := f.pair(t, digest[:], false)
		e := newEnvFor(t, v)
		c := clientFor(t, e, a, []byte(testInitData))
		tok, err := c.Token(bg)
		if err != nil {
			t.Fatal(err)
		}
		ae := annotated(t, tokenClaims(t, tok))
		idc, ok := ae["init_data_claims"].(map[string]any)
		if !ok || idc["note"] != "bound" {
			t.Fatalf("init_data_claims %v", ae["init_data_claims"])
		}
		if aa, _ := idc["aa.toml"].(map[string]any); aa == nil {
			t.Fatalf("aa.toml not converted to JSON: %v", idc["aa.toml"])
		}
	})
	t.Run("init-data mismatch", func(t *testing.T) {
		other := sha256.Sum256([]byte("other"))
		a, v := f.pair(t, other[:], false)
		e := newEnvFor(t, v)
		_, err := clientFor(t, e, a, []byte(testInitData)).Token(bg)
		if kbsVariant(err) != server.VariantAttestation || !strings.Contains(err.Error(), "init-data") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wrong trusted root", func(t *testing.T) {
		a, v := f.pair(t, nil, true)
		e := newEnvFor(t, v)
		_, err := clientFor(t, e, a, nil).Token(bg)
		if kbsVariant(err) != server.VariantAttestation {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("tampered evidence", func(t *testing.T) {
		a, v := f.pair(t, nil, false)
		e := newEnvFor(t, v)
		_, err := clientFor(t, e, tamperingAttester{Attester: a, tb: t, tamper: f.tamper}, nil).Token(bg)
		if kbsVariant(err) != server.VariantAttestation {
			t.Fatalf("err = %v", err)
		}
	})
}
