package server_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

// trusteeFlat writes a resource as Trustee's key-value local_fs backend
// does: one file under the repository named <repo>\x2F<type>\x2F<tag>.
func trusteeFlat(t *testing.T, dir, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRepositoryTrusteeFlatLayout(t *testing.T) {
	e := newEnv(t, server.Options{InsecureAdmin: true})
	c := e.client(t, sample.NewAttester(), "")
	trusteeFlat(t, e.dir, `default\x2Fkey\x2Fflat`, []byte("flat"))
	if got, err := c.GetResource(bg, "kbs:///default/key/flat"); err != nil || string(got) != "flat" {
		t.Fatalf("flat layout: %q, %v", got, err)
	}

	// Both layouts: the nested file wins.
	trusteeFlat(t, e.dir, `default\x2Fkey\x2Fboth`, []byte("flat"))
	e.writeResource(t, "default/key/both", []byte("nested"))
	if got, err := c.GetResource(bg, "kbs:///default/key/both"); err != nil || string(got) != "nested" {
		t.Fatalf("both layouts: %q, %v", got, err)
	}

	// A flat name is reached only by its own three segments: a segment
	// carrying the escape itself is not a valid resource path.
	for _, path := range []string{`/kbs/v0/resource/default%5Cx2Fkey/flat/x`, `/kbs/v0/resource/default/key%5Cx2Fflat/x`} {
		resp, err := http.Get(e.url() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404 (invalid path)", path, resp.StatusCode)
		}
	}

	// A flat-named symlink out of the repository is refused.
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(e.dir, `default\x2Flink\x2Fx`)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetResource(bg, "kbs:///default/link/x"); kbsVariant(err) != server.VariantPluginInternal {
		t.Fatalf("flat symlink escape: %q, %v", got, err)
	}

	// Deleting removes the flat file.
	req, _ := http.NewRequest(http.MethodDelete, e.url()+"/kbs/v0/resource/default/key/flat", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(e.dir, `default\x2Fkey\x2Fflat`)); !os.IsNotExist(err) {
		t.Fatalf("flat file after delete: %v", err)
	}
	if _, err := c.GetResource(bg, "kbs:///default/key/flat"); kbsVariant(err) != server.VariantPluginInternal {
		t.Fatalf("deleted resource: %v", err)
	}
}
