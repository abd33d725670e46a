// Package devkbs runs cocoon's development KBS (attest/kbs/server) on
// loopback with the sample verifier, and builds KBS clients that attest to
// it with the sample attester, for secretsfs tests and benchmarks. It is
// test support only and must never be linked into a production binary.
package devkbs

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

// KBS is a running development KBS.
type KBS struct {
	URL string // base URL for kbs.Config.URL
	Dir string // resource repository, Dir/<repo>/<type>/<tag>
}

// Start serves a KBS with the given resource policy (server.AllowAllPolicy,
// server.DefaultPolicy, or Rego text) until the test ends.
func Start(tb testing.TB, policy string) *KBS {
	tb.Helper()
	dir := tb.TempDir()
	srv, err := server.New(server.Options{Repository: dir, Policy: policy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		tb.Fatalf("start KBS: %v", err)
	}
	ts := httptest.NewServer(srv)
	tb.Cleanup(func() {
		ts.Close()
		_ = srv.Close()
	})
	return &KBS{URL: ts.URL, Dir: dir}
}

// Put stores a resource as an operator would (path is repo/type/tag).
func (k *KBS) Put(tb testing.TB, path string, content []byte) {
	tb.Helper()
	p := filepath.Join(k.Dir, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		tb.Fatal(err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		tb.Fatal(err)
	}
}

// Client returns a KBS client that attests with the sample attester.
func (k *KBS) Client(tb testing.TB) *kbs.Client {
	tb.Helper()
	c, err := kbs.NewClient(kbs.Config{URL: k.URL, Attester: sample.NewAttester()})
	if err != nil {
		tb.Fatalf("KBS client: %v", err)
	}
	return c
}
