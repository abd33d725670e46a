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

func TestSecretCommands(t *testing.T) {
	saved := newAttester
	t.Cleanup(func() { newAttester = saved })
	newAttester = func(string) (attest.Attester, error) { return sample.NewAttester(), nil }

	repo := t.TempDir()
	srv, err := server.New(server.Options{Repository: repo, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()
	ctx := context.Background()

	dir := t.TempDir()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signerJWK := filepath.Join(dir, "signer.jwk")
	forgerJWK := filepath.Join(dir, "forger.jwk")
	writeTestFile(t, signerJWK, privateJWK(t, signer))
	writeTestFile(t, forgerJWK, privateJWK(t, forger))
	pubJWK, err := sealed.PublicJWK(&signer.PublicKey, "")
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(repo, "default", "signing-key", "sealed-secret"), pubJWK)
	localCred := filepath.Join(dir, "local-signer.pub.jwk")
	writeTestFile(t, localCred, pubJWK)
	writeTestFile(t, filepath.Join(repo, "default", "sealed-secret", "test"), []byte("vault value"))
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(repo, "default", "kek", "1"), kek)
	kekFile := filepath.Join(dir, "kek.b64")
	writeTestFile(t, kekFile, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"))
	localKeys := filepath.Join(dir, "keys")
	writeTestFile(t, filepath.Join(localKeys, "kek-local"), kek)
	ptFile := filepath.Join(dir, "pt")
	writeTestFile(t, ptFile, []byte("envelope value"))

	const kid = "kbs:///default/signing-key/sealed-secret"
	seal := func(t *testing.T, run func(*bytes.Buffer) error) string {
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
	vault := seal(t, func(out *bytes.Buffer) error {
		return runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///default/sealed-secret/test", "--signing-kid", kid, "--signing-jwk-path", signerJWK}, out)
	})
	// Upstream's exact header and payload shapes.
	parts := strings.Split(strings.TrimPrefix(vault, "sealed."), ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if string(hdr) != `{"b64":true,"alg":"ES256","kid":"`+kid+`"}` {
		t.Fatalf("header %s", hdr)
	}
	if string(payload) != `{"version":"0.1.0","type":"vault","name":"kbs:///default/sealed-secret/test","provider":"kbs","provider_settings":{},"annotations":{}}` {
		t.Fatalf("payload %s", payload)
	}
	envKBS := seal(t, func(out *bytes.Buffer) error {
		return runSecretSealEnvelope(ctx, []string{"--key-id", "kbs:///default/kek/1", "--kek-path", kekFile, "--plaintext-path", ptFile, "--signing-kid", kid, "--signing-jwk-path", signerJWK}, nil, out)
	})
	envLocal := seal(t, func(out *bytes.Buffer) error {
		return runSecretSealEnvelope(ctx, []string{"--provider", "local", "--key-id", "kek-local", "--kek-path", kekFile, "--signing-kid", "local-signer", "--signing-jwk-path", signerJWK}, strings.NewReader("from stdin"), out)
	})
	forged := seal(t, func(out *bytes.Buffer) error {
		return runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///default/sealed-secret/test", "--signing-kid", kid, "--signing-jwk-path", forgerJWK}, out)
	})
	unknownKid := seal(t, func(out *bytes.Buffer) error {
		return runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///default/sealed-secret/test", "--signing-kid", "kbs:///default/signing-key/missing", "--signing-jwk-path", signerJWK}, out)
	})
	legacy := "sealed.fakejwsheader." + parts[1] + ".fakesignature"

	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
		err   string
	}{
		{name: "vault", args: []string{"--kbs-url", ts.URL, vault}, want: "vault value"},
		{name: "vault from stdin", args: []string{"--kbs-url", ts.URL, "-"}, stdin: vault + "\n", want: "vault value"},
		{name: "envelope kbs", args: []string{"--kbs-url", ts.URL, envKBS}, want: "envelope value"},
		{name: "envelope local, local credential", args: []string{"--credential", "local-signer=" + localCred, "--local-key-dir", localKeys, envLocal}, want: "from stdin"},
		{name: "forged signature", args: []string{"--kbs-url", ts.URL, forged}, err: "sealed secret signature: ES256 signature does not verify"},
		{name: "unknown kid", args: []string{"--kbs-url", ts.URL, unknownKid}, err: "sealed secret kid fetch: kid kbs:///default/signing-key/missing"},
		{name: "unknown local kid", args: []string{envLocal}, err: `sealed secret kid fetch: kid "local-signer": unknown kid`},
		{name: "no kbs", args: []string{vault}, err: "no KBS configured"},
		{name: "legacy refused", args: []string{"--kbs-url", ts.URL, legacy}, err: "unsigned (legacy) sealed secret refused"},
		{name: "legacy skip", args: []string{"--kbs-url", ts.URL, "--skip-verification", legacy}, want: "vault value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runSecretUnseal(ctx, tc.args, strings.NewReader(tc.stdin), &out)
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
			return runSecretUnseal(ctx, []string{"--credential", "nofile", vault}, nil, &bytes.Buffer{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); !errors.Is(err, errUsage) && !strings.Contains(err.Error(), "KID=FILE") {
				t.Fatalf("err = %v, want usage error", err)
			}
		})
	}
	// A public JWK cannot sign.
	if err := runSecretSealVault(ctx, []string{"--resource-uri", "kbs:///a/b/c", "--signing-kid", kid, "--signing-jwk-path", localCred}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "private") {
		t.Fatalf("public JWK accepted for signing: %v", err)
	}
}
