package sealed_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// FuzzUnseal feeds arbitrary strings through the whole verification path
// (parse, kid lookup, ES256 verify, payload decode) with a real local
// credential. Nothing may panic; anything that verifies must carry a valid
// payload; errors must be *sealed.Error.
func FuzzUnseal(f *testing.F) {
	key := testKey(f, "gc-test-key.json")
	dir := f.TempDir()
	cred := writeJWK(f, dir, "test-key", key)
	good, err := sealed.Sign(vaultSecret("kbs:///one/2/trois"), key, "test-key")
	if err != nil {
		f.Fatal(err)
	}
	var v struct {
		Secrets map[string]string `json:"secrets"`
	}
	if err := json.Unmarshal(readVector(f, "kata-precreated-sealed-secrets.json"), &v); err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	for _, s := range v.Secrets {
		f.Add(s)
	}
	f.Add("sealed.fakejwsheader.eyJ2ZXJzaW9uIjoiMC4xLjAifQ.fakesignature")
	f.Add("sealed.sealed.e30.e30.AA")
	u := &sealed.Unsealer{Credentials: map[string]string{"test-key": cred}}
	skip := &sealed.Unsealer{SkipVerification: true}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, in string) {
		for _, u := range []*sealed.Unsealer{u, skip} {
			s, err := u.Open(ctx, in)
			if err != nil {
				var se *sealed.Error
				if !errors.As(err, &se) {
					t.Fatalf("error %v is not a *sealed.Error", err)
				}
				continue
			}
			if s.Version != sealed.Version || (s.Vault == nil) == (s.Envelope == nil) {
				t.Fatalf("accepted invalid secret %+v", s)
			}
			if _, err := json.Marshal(s); err != nil {
				t.Fatalf("accepted secret does not re-encode: %v", err)
			}
		}
	})
}

// FuzzParsePayload: payload JSON either fails with a payload error or
// round-trips through MarshalJSON to an equal value.
func FuzzParsePayload(f *testing.F) {
	for _, name := range []string{"gc-vault-1.json", "gc-vault-2.json", "gc-envelope-1.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"version":"0.1.0","type":"vault"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := sealed.ParsePayload(b)
		if err != nil {
			var se *sealed.Error
			if !errors.As(err, &se) || se.Part != sealed.PartPayload {
				t.Fatalf("error %v is not a payload error", err)
			}
			return
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := sealed.ParsePayload(out)
		if err != nil {
			t.Fatalf("re-encoded payload %s does not parse: %v", out, err)
		}
		out2, err := json.Marshal(s2)
		if err != nil || string(out) != string(out2) {
			t.Fatalf("not stable: %s vs %s (%v)", out, out2, err)
		}
	})
}
