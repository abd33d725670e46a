package sealed_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/secretsfs/internal/devkbs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// TestKataVectorsThroughKBS unseals kata's real sealed secrets end to end:
// the published JWK and the secret values live in a development KBS, the
// client attests with the sample attester, and the Unsealer fetches the kid
// and the vault resource.
func TestKataVectorsThroughKBS(t *testing.T) {
	var v struct {
		JWK     json.RawMessage   `json:"signing_public_jwk"`
		KidURI  string            `json:"signing_public_jwk_provisioned_at"`
		Secrets map[string]string `json:"secrets"`
		Decoded map[string]struct {
			Payload struct {
				Name string `json:"name"`
			} `json:"payload"`
		} `json:"decoded_(derived)"`
	}
	if err := json.Unmarshal(readVector(t, "kata-precreated-sealed-secrets.json"), &v); err != nil {
		t.Fatal(err)
	}
	k := devkbs.Start(t, server.AllowAllPolicy)
	k.Put(t, strings.TrimPrefix(v.KidURI, "kbs:///"), v.JWK)
	want := map[string][]byte{}
	for name := range v.Secrets {
		uri := v.Decoded[name].Payload.Name
		want[name] = []byte("value of " + name)
		k.Put(t, strings.TrimPrefix(uri, "kbs:///"), want[name])
	}
	u := &sealed.Unsealer{Resources: k.Client(t)}
	ctx := context.Background()
	for name, s := range v.Secrets {
		t.Run(name, func(t *testing.T) {
			got, err := u.Unseal(ctx, []byte(s))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[name]) {
				t.Fatalf("got %q", got)
			}
		})
	}
}

func TestUnsealThroughKBS(t *testing.T) {
	ctx := context.Background()
	key := testKey(t, "gc-test-key.json")
	forger := testKey(t, "gc-test-key-2.json")
	jwk, err := sealed.PublicJWK(&key.PublicKey, "")
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, sealed.KeySize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	const kid = "kbs:///default/signing-key/sealed-secret"
	const kekURI = "kbs:///default/kek/1"

	allow := devkbs.Start(t, server.AllowAllPolicy)
	deny := devkbs.Start(t, server.DefaultPolicy) // denies the sample TEE
	for _, k := range []*devkbs.KBS{allow, deny} {
		k.Put(t, "default/signing-key/sealed-secret", jwk)
		k.Put(t, "default/sealed-secret/vault", []byte("vault plaintext"))
		k.Put(t, "default/kek/1", kek)
	}
	sign := func(s *sealed.Secret, signer, kid string) []byte {
		k := key
		if signer == "forger" {
			k = forger
		}
		out, err := sealed.Sign(s, k, kid)
		if err != nil {
			t.Fatal(err)
		}
		return []byte(out)
	}
	env, err := sealed.SealEnvelope([]byte("envelope plaintext"), kek, sealed.ProviderKBS, kekURI)
	if err != nil {
		t.Fatal(err)
	}
	envSecret := &sealed.Secret{Version: sealed.Version, Envelope: env}
	vault := vaultSecret("kbs:///default/sealed-secret/vault")

	for _, tc := range []struct {
		name     string
		kbs      *devkbs.KBS
		in       []byte
		want     string
		part     sealed.Part
		policy   bool // want a PolicyDeny StatusError in the chain
		errNames string
	}{
		{name: "vault", kbs: allow, in: sign(vault, "key", kid), want: "vault plaintext"},
		{name: "envelope kbs provider", kbs: allow, in: sign(envSecret, "key", kid), want: "envelope plaintext"},
		{name: "forged signature", kbs: allow, in: sign(vault, "forger", kid), part: sealed.PartSignature, errNames: "signature"},
		{name: "unknown kid", kbs: allow, in: sign(vault, "key", "kbs:///default/signing-key/missing"), part: sealed.PartKidFetch, errNames: "kbs:///default/signing-key/missing"},
		{name: "missing vault resource", kbs: allow, in: sign(vaultSecret("kbs:///default/sealed-secret/none"), "key", kid), part: sealed.PartProvider, errNames: "kbs:///default/sealed-secret/none"},
		{name: "policy denies kid", kbs: deny, in: sign(vault, "key", kid), part: sealed.PartKidFetch, policy: true, errNames: "PolicyDeny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &sealed.Unsealer{Resources: tc.kbs.Client(t)}
			got, err := u.Unseal(ctx, tc.in)
			if tc.part == "" {
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != tc.want {
					t.Fatalf("got %q", got)
				}
				return
			}
			var se *sealed.Error
			if !errors.As(err, &se) || se.Part != tc.part || !strings.Contains(err.Error(), tc.errNames) {
				t.Fatalf("err = %v, want part %q naming %q", err, tc.part, tc.errNames)
			}
			var st *kbs.StatusError
			gotPolicy := errors.As(err, &st) && st.Info != nil && st.Info.Variant() == "PolicyDeny"
			if gotPolicy != tc.policy {
				t.Fatalf("policy denial in chain = %v, want %v (err %v)", gotPolicy, tc.policy, err)
			}
		})
	}
}

// TestProviderAndKidSchemeCaseInsensitive: upstream matches vault and
// envelope provider names ASCII case-insensitively (strum) and parses kids
// and vault names as URLs, whose scheme is case-insensitive. A secret
// written that way unseals here too, through a real KBS; a name that only
// Unicode folding would match is still refused.
func TestProviderAndKidSchemeCaseInsensitive(t *testing.T) {
	ctx := context.Background()
	key := testKey(t, "gc-test-key.json")
	jwk, err := sealed.PublicJWK(&key.PublicKey, "")
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, sealed.KeySize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	k := devkbs.Start(t, server.AllowAllPolicy)
	k.Put(t, "default/signing-key/sealed-secret", jwk)
	k.Put(t, "default/sealed-secret/vault", []byte("vault plaintext"))
	k.Put(t, "default/kek/1", kek)
	env, err := sealed.SealEnvelope([]byte("envelope plaintext"), kek, "Kbs", "KBS:///default/kek/1")
	if err != nil {
		t.Fatal(err)
	}
	u := &sealed.Unsealer{Resources: k.Client(t)}
	for _, tc := range []struct {
		name, kid string
		secret    *sealed.Secret
		want      string
	}{
		{"vault provider KBS", "kbs:///default/signing-key/sealed-secret",
			&sealed.Secret{Version: sealed.Version, Vault: &sealed.Vault{Name: "kbs:///default/sealed-secret/vault", Provider: "KBS"}}, "vault plaintext"},
		{"kid scheme KBS", "KBS:///default/signing-key/sealed-secret", vaultSecret("kbs:///default/sealed-secret/vault"), "vault plaintext"},
		{"vault name scheme Kbs", "Kbs:///default/signing-key/sealed-secret",
			&sealed.Secret{Version: sealed.Version, Vault: &sealed.Vault{Name: "Kbs:///default/sealed-secret/vault", Provider: "kBs"}}, "vault plaintext"},
		{"envelope provider Kbs", "kbs:///default/signing-key/sealed-secret", &sealed.Secret{Version: sealed.Version, Envelope: env}, "envelope plaintext"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := sealed.Sign(tc.secret, key, tc.kid)
			if err != nil {
				t.Fatal(err)
			}
			got, err := u.Unseal(ctx, []byte(in))
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	kelvin := &sealed.Secret{Version: sealed.Version, Vault: &sealed.Vault{Name: "kbs:///default/sealed-secret/vault", Provider: "\u212abs"}}
	in, err := sealed.Sign(kelvin, key, "kbs:///default/signing-key/sealed-secret")
	if err != nil {
		t.Fatal(err)
	}
	var se *sealed.Error
	if _, err := u.Unseal(ctx, []byte(in)); !errors.As(err, &se) || se.Part != sealed.PartProvider {
		t.Fatalf("provider with a Kelvin sign: err %v, want a provider error", err)
	}
}
