package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestLazyPullPrivateRegistry: an eStargz image on a registry that needs
// basic auth is pulled lazily with the credentials cocoond fetched from
// the KBS (cdh.toml authenticated_registry_credentials_uri): cocoond hands
// them to the lazy FUSE server, whose range requests carry them, and
// neither writes the password to a log or a state file.
func TestLazyPullPrivateRegistry(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy, cdh := startPrivateRegistry(t, ctx, env, reg)
	user, pass := proxy.user, proxy.pass
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host, proxy.host},
		Config:             lazyConfig,
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &lazyStack{env: env, reg: reg, cocoond: cd, ctrd: startContainerdFor(t, ctx, env, cd)}
	im, msg := s.pushESGZImage(t, ctx, "private/lazy", false)
	ref := proxy.host + strings.TrimPrefix(im.Ref, reg.Host)

	// containerd itself needs the credentials for the manifest and config.
	before := proxy.authedBlobs.Load()
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--user", user+":"+pass, "--snapshotter", snapshotterName, ref); err != nil {
		t.Fatalf("lazy pull from the private registry: %v", err)
	}
	out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, ref, containerID(t, "private-lazy"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("run: %q, %v; want %q", out, err, msg)
	}
	if !strings.Contains(cd.Proc.Log(), "lazy layer mounted and committed") {
		t.Fatalf("cocoond did not mount the layers lazily:\n%s", cd.Proc.Log())
	}
	if !strings.Contains(cd.Proc.Log(), "registry credentials loaded") {
		t.Error("cocoond did not load the credentials from the KBS")
	}
	// The lazy layers' TOCs and chunks came through the server: only it
	// fetched blobs after containerd's own pull (which fetches none).
	if n := proxy.authedBlobs.Load() - before; n == 0 {
		t.Error("no authenticated blob request reached the private registry")
	}
	t.Logf("authenticated blob requests: %d; refused: %d", proxy.authedBlobs.Load()-before, proxy.unauthorized.Load())
	if strings.Contains(cd.Proc.Log(), pass) || strings.Contains(cd.LazyServerLog(), pass) {
		t.Error("cocoond or the lazy FUSE server logged the registry password")
	}
	ents, err := os.ReadDir(cd.LazyServerDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(cd.LazyServerDir(), e.Name()))
		if err == nil && (strings.Contains(string(b), pass) || strings.Contains(string(b), base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))) {
			t.Errorf("the lazy FUSE server's %s holds the registry credentials", e.Name())
		}
	}
}
