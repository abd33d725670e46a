package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

func TestEvidenceCommand(t *testing.T) {
	var out bytes.Buffer
	if err := runEvidence(context.Background(), []string{"--tee", "sample", "--runtime-data", "hello"}, &out); err != nil {
		t.Fatal(err)
	}
	var ev sample.Evidence
	if err := json.Unmarshal(out.Bytes(), &ev); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if ev.ReportData != base64.StdEncoding.EncodeToString([]byte("hello")) || ev.SVN != "1" {
		t.Fatalf("evidence %+v", ev)
	}
	if err := runEvidence(context.Background(), []string{"--tee", "cca"}, &out); err == nil {
		t.Fatal("unknown TEE accepted")
	}
}

func TestKBSCommands(t *testing.T) {
	saved := newAttester
	t.Cleanup(func() { newAttester = saved })
	newAttester = func(string) (attest.Attester, error) { return sample.NewAttester(), nil }

	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "default", "key"), 0o700); err != nil {
		t.Fatal(err)
	}
	secret := []byte{0, 1, 2, 0xff, '\n'}
	if err := os.WriteFile(filepath.Join(dir, "default", "key", "1"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Repository: dir, Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv)
	defer ts.Close()
	ctx := context.Background()

	var out bytes.Buffer
	if err := runKBSToken(ctx, []string{"--url", ts.URL}, &out); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out.String())
	if tt, err := kbs.ParseTokenTimes(tok); err != nil || tt.Expiry.IsZero() {
		t.Fatalf("token %q: %v", tok, err)
	}
	out.Reset()
	if err := runKBSGetResource(ctx, []string{"--url", ts.URL, "--tee-key-algorithm", kbs.KeyAlgorithmRSAOAEP, "kbs:///default/key/1"}, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), secret) {
		t.Fatalf("stdout %q, want the raw resource bytes", out.Bytes())
	}
	for _, args := range [][]string{{"kbs:///default/key/1"}, {"--url", ts.URL}, {"--url", ts.URL, "a", "b"}} {
		if err := runKBSGetResource(ctx, args, &out); !errors.Is(err, errUsage) {
			t.Fatalf("%q: err = %v, want usage", args, err)
		}
	}
	if err := runKBSGetResource(ctx, []string{"--url", ts.URL, "kbs:///default/key/none"}, &out); err == nil {
		t.Fatal("missing resource fetched")
	}
}
