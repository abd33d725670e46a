package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// privateJWK encodes k as a P-256 private JWK, the --signing-jwk-path input.
func privateJWK(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	d, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ES256",
		"x": base64.RawURLEncoding.EncodeToString(pub[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(pub[33:]),
		"d": base64.RawURLEncoding.EncodeToString(d),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// secretFixture is a development KBS holding a signing key, a vault value
// and a KEK, the matching local files, and secrets sealed with them.
type secretFixture struct {
	kbsURL                                         string
	signerJWK, forgerJWK, localCred, kekFile, keys string
	ptFile                                         string
	vault, envKBS, envLocal, forged, unknownKid    string
	legacy                                         string
}

const secretSigningKid = "kbs:///default/signing-key/sealed-secret"

func newSecretFixture(t *testing.T) *secretFixture {
	t.Helper()
	saved := newAttester
	t.Cleanup(func() { newAttester = saved })
	newAttester = func(string) (attest.Attester, error) { return sample.NewAttester(), nil }
	repo := t.TempDir()
	srv, err := server.New(server.Options{Repository: repo, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() { ts.Close(); srv.Close() })
	dir := t.TempDir()
	f := &secretFixture{kbsURL: ts.URL, signerJWK: filepath.Join(dir, "signer.jwk"), forgerJWK: filepath.Join(dir, "forger.jwk"),
		localCred: filepath.Join(dir, "local-signer.pub.jwk"), kekFile: filepath.Join(dir, "kek.b64"),
		keys: filepath.Join(dir, "keys"), ptFile: filepath.Join(dir, "pt")}
	for _, p := range []string{f.signerJWK, f.forgerJWK} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, p, privateJWK(t, k))
		if p == f.signerJWK {
			pubJWK, err := sealed.PublicJWK(&k.PublicKey, "")
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, filepath.Join(repo, "default", "signing-key", "sealed-secret"), pubJWK)
			writeTestFile(t, f.localCred, pubJWK)
		}
	}
	writeTestFile(t, filepath.Join(repo, "default", "sealed-secret", "test"), []byte("vault value"))
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(repo, "default", "kek", "1"), kek)
	writeTestFile(t, f.kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"))
	writeTestFile(t, filepath.Join(f.keys, "kek-local"), kek)
	writeTestFile(t, f.ptFile, []byte("envelope value"))
	f.sealAll(t)
	return f
}

// seal runs a seal command and checks its output is a sealed secret.
func seal(t *testing.T, run func(*bytes.Buffer) error) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(out.String())
	if !strings.HasPrefix(s, "sealed.") || strings.Count(s, ".") != 3 {
		t.Fatalf("output %q is not a sealed secret", s)
	}
	return s
}

func (f *secretFixture) sealAll(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	vault := func(kid, jwk string) func(*bytes.Buffer) error {
		return func(out *bytes.Buffer) error {
			return runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///default/sealed-secret/test", "--signing-kid", kid, "--signing-jwk-path", jwk}, out)
		}
	}
	f.vault = seal(t, vault(secretSigningKid, f.signerJWK))
	f.envKBS = seal(t, func(out *bytes.Buffer) error {
		return runSecretSealEnvelope(ctx, []string{"--key-id", "kbs:///default/kek/1", "--kek-path", f.kekFile, "--plaintext-path", f.ptFile, "--signing-kid", secretSigningKid, "--signing-jwk-path", f.signerJWK}, nil, out)
	})
	f.envLocal = seal(t, func(out *bytes.Buffer) error {
		return runSecretSealEnvelope(ctx, []string{"--provider", "local", "--key-id", "kek-local", "--kek-path", f.kekFile, "--signing-kid", "local-signer", "--signing-jwk-path", f.signerJWK}, strings.NewReader("from stdin"), out)
	})
	f.forged = seal(t, vault(secretSigningKid, f.forgerJWK))
	f.unknownKid = seal(t, vault("kbs:///default/signing-key/missing", f.signerJWK))
	f.legacy = "sealed.fakejwsheader." + strings.Split(f.vault, ".")[2] + ".fakesignature"
}

func TestSecretSealShapes(t *testing.T) {
	f := newSecretFixture(t)
	// Upstream's exact header and payload shapes.
	parts := strings.Split(strings.TrimPrefix(f.vault, "sealed."), ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if string(hdr) != `{"b64":true,"alg":"ES256","kid":"`+secretSigningKid+`"}` {
		t.Fatalf("header %s", hdr)
	}
	if string(payload) != `{"version":"0.1.0","type":"vault","name":"kbs:///default/sealed-secret/test","provider":"kbs","provider_settings":{},"annotations":{}}` {
		t.Fatalf("payload %s", payload)
	}
}

func TestSecretUnseal(t *testing.T) {
	f := newSecretFixture(t)
	url := f.kbsURL
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
		err   string
	}{
		{name: "vault", args: []string{"--kbs-url", url, f.vault}, want: "vault value"},
		{name: "vault from stdin", args: []string{"--kbs-url", url, "-"}, stdin: f.vault + "\n", want: "vault value"},
		{name: "envelope kbs", args: []string{"--kbs-url", url, f.envKBS}, want: "envelope value"},
		{name: "envelope local, local credential", args: []string{"--credential", "local-signer=" + f.localCred, "--local-key-dir", f.keys, f.envLocal}, want: "from stdin"},
		{name: "forged signature", args: []string{"--kbs-url", url, f.forged}, err: "sealed secret signature: ES256 signature does not verify"},
		{name: "unknown kid", args: []string{"--kbs-url", url, f.unknownKid}, err: "sealed secret kid fetch: kid kbs:///default/signing-key/missing"},
		{name: "unknown local kid", args: []string{f.envLocal}, err: `sealed secret kid fetch: kid "local-signer": unknown kid`},
		{name: "no kbs", args: []string{f.vault}, err: "no KBS configured"},
		{name: "legacy refused", args: []string{"--kbs-url", url, f.legacy}, err: "unsigned (legacy) sealed secret refused"},
		{name: "legacy skip", args: []string{"--kbs-url", url, "--skip-verification", f.legacy}, want: "vault value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runSecretUnseal(context.Background(), tc.args, strings.NewReader(tc.stdin), &out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if out.Len() != 0 {
					t.Fatal("output on failure")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Fatalf("stdout %q, want %q", out.String(), tc.want)
			}
		})
	}
}

func TestSecretUsageErrors(t *testing.T) {
	f := newSecretFixture(t)
	ctx := context.Background()
	kid, signerJWK, kekFile := secretSigningKid, f.signerJWK, f.kekFile
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"vault no uri", func() error {
			return runSecretSealVault(ctx, []string{"--signing-kid", kid, "--signing-jwk-path", signerJWK}, &bytes.Buffer{})
		}},
		{"vault no kid", func() error {
			return runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///a/b/c", "--signing-jwk-path", signerJWK}, &bytes.Buffer{})
		}},
		{"envelope bad provider", func() error {
			return runSecretSealEnvelope(ctx, []string{"--provider", "aws", "--key-id", "k", "--kek-path", kekFile, "--signing-kid", kid, "--signing-jwk-path", signerJWK}, nil, &bytes.Buffer{})
		}},
		{"envelope local path key id", func() error {
			return runSecretSealEnvelope(ctx, []string{"--provider", "local", "--key-id", "../k", "--kek-path", kekFile, "--signing-kid", kid, "--signing-jwk-path", signerJWK}, nil, &bytes.Buffer{})
		}},
		{"unseal no argument", func() error { return runSecretUnseal(ctx, nil, nil, &bytes.Buffer{}) }},
		{"unseal bad credential", func() error {
			return runSecretUnseal(ctx, []string{"--credential", "nofile", f.vault}, nil, &bytes.Buffer{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); !errors.Is(err, errUsage) && !strings.Contains(err.Error(), "KID=FILE") {
				t.Fatalf("err = %v, want usage error", err)
			}
		})
	}
	// A public JWK cannot sign.
	if err := runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///a/b/c", "--signing-kid", kid, "--signing-jwk-path", f.localCred}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "private") {
		t.Fatalf("public JWK accepted for signing: %v", err)
	}
}
