package restapi

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

// recordingKBS is the development KBS (sample verifier, allow-all policy)
// behind a handler that records every resource request it receives, so a
// test sees exactly what the REST shim made the KBS client ask for.
type recordingKBS struct {
	mu       sync.Mutex
	requests []string // RequestURI of each /resource/ request
}

func (k *recordingKBS) resourceRequests() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.requests...)
}

// newKBSBackedHandler serves the REST shim with the real KBS client as its
// CDH, talking to a development KBS that holds default/db/password.
func newKBSBackedHandler(t *testing.T) (*Handler, *recordingKBS) {
	t.Helper()
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "default", "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "db", "password"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{
		Repository: repo,
		Policy:     server.AllowAllPolicy,
		Verifiers:  []attest.Verifier{sample.NewVerifier()},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingKBS{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/resource/") {
			rec.mu.Lock()
			rec.requests = append(rec.requests, r.RequestURI)
			rec.mu.Unlock()
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		ts.Close()
		_ = srv.Close()
	})
	c, err := kbs.NewClient(kbs.Config{URL: ts.URL, Attester: sample.NewAttester(), HTTPTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return New(Options{Features: FeatureResource, CDH: c}), rec
}

// TestResourcePathNeverBecomesAQuery sends percent-encoded characters that
// would change the KBS request once decoded. None may reach the KBS: a '?'
// would add data.query to what the resource policy sees, a '/' would add a
// segment, a '%' would be decoded a second time.
func TestResourcePathNeverBecomesAQuery(t *testing.T) {
	h, rec := newKBSBackedHandler(t)
	if code, body := do(h, "GET", "/cdh/resource/default/db/password", "", local); code != 200 || body != "s3cret" {
		t.Fatalf("plain resource = %d %q", code, body)
	}
	if got := rec.resourceRequests(); len(got) != 1 || got[0] != kbs.PathPrefix+"/resource/default/db/password" {
		t.Fatalf("KBS saw %q", got)
	}
	for _, target := range []string{
		"/cdh/resource/default/db/password%3Fa=b",
		"/cdh/resource/default/db/password%3fa=b",
		"/cdh/resource/default/db/password%23frag",
		"/cdh/resource/default/db%3Fx=/password",
		"/cdh/resource/default/db/password%2F..%2F..%2Fx",
		"/cdh/resource/default%2Fdb/password/x",
		"/cdh/resource/default/db/password%253Fa=b",
		"/cdh/resource/default/%2e%2e/password",
		"/cdh/resource/default/../password",
	} {
		code, body := do(h, "GET", target, "", local)
		if code != http.StatusBadRequest || !strings.HasPrefix(body, "BAD REQUEST: resource path segment") {
			t.Errorf("%s = %d %q, want 400 naming the segment", target, code, body)
		}
	}
	if got := rec.resourceRequests(); len(got) != 1 {
		t.Errorf("KBS saw refused paths: %q", got[1:])
	}
	for _, got := range rec.resourceRequests() {
		if strings.ContainsAny(got, "?#") {
			t.Errorf("KBS request carries a query or fragment: %q", got)
		}
	}
}

// TestResourcePathSegmentsLeftToCDH: upstream passes any path below
// /cdh/resource to the CDH, which answers other than repo/type/tag with an
// error (500), not 400.
func TestResourcePathSegmentsLeftToCDH(t *testing.T) {
	h, rec := newKBSBackedHandler(t)
	for _, target := range []string{
		"/cdh/resource/",
		"/cdh/resource/default",
		"/cdh/resource/default/db",
		"/cdh/resource/default/db/password/extra",
		"/cdh/resource/default//password",
	} {
		code, body := do(h, "GET", target, "", local)
		if code != http.StatusInternalServerError || !strings.Contains(body, "parse resource URI") {
			t.Errorf("%s = %d %q, want 500 with the CDH's error", target, code, body)
		}
	}
	if got := rec.resourceRequests(); len(got) != 0 {
		t.Errorf("KBS saw %q", got)
	}
}
