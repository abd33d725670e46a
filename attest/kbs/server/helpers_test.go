package server_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

// clock is a settable test clock shared by server and client.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a running development KBS on loopback.
type env struct {
	srv   *server.Server
	ts    *httptest.Server
	dir   string
	clock *clock
	auths atomic.Int64 // POST /auth calls seen
}

func (e *env) url() string { return e.ts.URL }

// writeResource puts a resource file in place as an operator would.
func (e *env) writeResource(tb testing.TB, path string, content []byte) {
	tb.Helper()
	p := filepath.Join(e.dir, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// newEnv starts a KBS with the sample verifier plus extra verifiers; opts
// fields left zero get test defaults (allow-all policy, test clock).
func newEnv(tb testing.TB, opts server.Options, extra ...attest.Verifier) *env {
	tb.Helper()
	e := &env{dir: tb.TempDir(), clock: newClock()}
	if opts.Repository == "" {
		opts.Repository = e.dir
	} else {
		e.dir = opts.Repository
	}
	if opts.Policy == "" {
		opts.Policy = server.AllowAllPolicy
	}
	if opts.Now == nil {
		opts.Now = e.clock.Now
	}
	opts.Verifiers = append([]attest.Verifier{sample.NewVerifier()}, extra...)
	srv, err := server.New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	e.srv = srv
	e.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/auth") {
			e.auths.Add(1)
		}
		srv.ServeHTTP(w, r)
	}))
	tb.Cleanup(func() {
		e.ts.Close()
		_ = srv.Close()
	})
	return e
}

func (e *env) client(tb testing.TB, a attest.Attester, alg string) *kbs.Client {
	tb.Helper()
	c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: a, TEEKeyAlgorithm: alg, Now: e.clock.Now, HTTPTimeout: 10 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// tokenClaims decodes a token's payload without verifying it.
func tokenClaims(tb testing.TB, tok string) map[string]any {
	tb.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		tb.Fatalf("token has %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatal(err)
	}
	return m
}

func annotated(tb testing.TB, claims map[string]any) map[string]any {
	tb.Helper()
	sub, _ := claims["submods"].(map[string]any)
	cpu, _ := sub["cpu0"].(map[string]any)
	ae, ok := cpu["ear.veraison.annotated-evidence"].(map[string]any)
	if !ok {
		tb.Fatalf("token has no annotated evidence: %v", claims)
	}
	return ae
}

// kbsVariant returns the KBS error variant a client error carries.
func kbsVariant(err error) string {
	var se *kbs.StatusError
	if !errors.As(err, &se) {
		return ""
	}
	if se.Info != nil {
		return se.Info.Variant()
	}
	return http.StatusText(se.Status)
}

var bg = context.Background()
