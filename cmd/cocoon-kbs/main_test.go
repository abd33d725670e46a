package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRunServesAndStops(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	writeFile(t, filepath.Join(repo, "default", "key", "1"), []byte("from cmd"))
	policy := writeFile(t, filepath.Join(dir, "allow.rego"), []byte(server.AllowAllPolicy))
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	admin := writeFile(t, filepath.Join(dir, "admin.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tkDER, _ := x509.MarshalPKCS8PrivateKey(tk)
	tokenKey := writeFile(t, filepath.Join(dir, "token.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: tkDER}))

	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--repository", repo, "--resource-policy", policy,
			"--admin-public-key", admin, "--token-key", tokenKey, "--token-lifetime", "1m", "--log-level", "warn"},
			func(a string) { addrc <- a })
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	c, err := kbs.NewClient(kbs.Config{URL: "http://" + addr, Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetResource(ctx, "kbs:///default/key/1")
	if err != nil || string(got) != "from cmd" {
		t.Fatalf("resource %q, %v", got, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("server did not stop")
	}
}

// startKBS runs cocoon-kbs with args on a free loopback port until the
// test ends and returns its URL.
func startKBS(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0", "--log-level", "error"}, args...), func(a string) { addrc <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case a := <-addrc:
		return "http://" + a
	case err := <-done:
		done <- err
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	return ""
}

// A default cocoon-kbs (no --resource-policy, no --tpm-trusted-ak) gives
// nothing to tpm evidence signed by a software key; naming that key with
// --tpm-trusted-ak is what makes it a TPM the KBS trusts.
func TestForgedTPMNeedsTrustedAK(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	writeFile(t, filepath.Join(repo, "default", "key", "1"), []byte("tpm only"))
	forged, err := tpmtest.NewForgedAttester(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(forged.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	akFile := writeFile(t, filepath.Join(dir, "ak.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	fetch := func(url string) ([]byte, error) {
		c, err := kbs.NewClient(kbs.Config{URL: url, Attester: forged, HTTPTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c.GetResource(context.Background(), "kbs:///default/key/1")
	}

	_, err = fetch(startKBS(t, "--repository", repo))
	var se *kbs.StatusError
	if !errors.As(err, &se) || (se.Status != http.StatusUnauthorized && se.Status != http.StatusForbidden) {
		t.Fatalf("default cocoon-kbs, forged TPM: err = %v, want 401/403", err)
	}
	got, err := fetch(startKBS(t, "--repository", repo, "--tpm-trusted-ak", akFile))
	if err != nil || string(got) != "tpm only" {
		t.Fatalf("with --tpm-trusted-ak: resource %q, %v", got, err)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--repository"},
		{[]string{"--repository", "x", "--cert", "c"}, "--cert and --key"},
		{[]string{"--repository", "x", "extra"}, "unexpected"},
		{[]string{"--repository", t.TempDir(), "--snp-roots", "nofile"}, "PRODUCT=FILE"},
		{[]string{"--repository", t.TempDir(), "--resource-policy", "/nonexistent"}, "resource policy"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := run(context.Background(), tc.args, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
