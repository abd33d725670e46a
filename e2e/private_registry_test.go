package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// authProxy is a small authenticating front for the crane registry: every
// /v2/ request needs HTTP basic credentials, as a private registry's would.
type authProxy struct {
	host         string
	authedBlobs  atomic.Int64 // blob GETs that carried the right credentials
	unauthorized atomic.Int64
	user, pass   string
	upstream     *httputil.ReverseProxy
}

func mustWrite(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startAuthProxy(t *testing.T, upstream, user, pass string) *authProxy {
	t.Helper()
	u, _ := url.Parse("http://" + upstream)
	p := &authProxy{user: user, pass: pass, upstream: httputil.NewSingleHostReverseProxy(u)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("registry proxy: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close() })
	p.host = l.Addr().String()
	return p
}

func (p *authProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok || user != p.user || pass != p.pass {
		p.unauthorized.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="cocoon-e2e"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
		return
	}
	if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
		p.authedBlobs.Add(1)
	}
	p.upstream.ServeHTTP(w, r)
}

// startPrivateRegistry puts a basic-auth proxy (a random password) in front
// of reg and starts a development KBS holding its containers-auth.json at
// kbs:///default/credential/registry; it returns the proxy and a cdh.toml
// that points cocoond at both.
func startPrivateRegistry(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry) (*authProxy, string) {
	t.Helper()
	user, pass := "cocoon", "pw-"+randomToken(t)
	proxy := startAuthProxy(t, reg.Host, user, pass)
	authJSON := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, proxy.host, base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{"default/credential/registry": []byte(authJSON)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cdh := env.Path("cdh.toml")
	mustWrite(t, cdh, fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nauthenticated_registry_credentials_uri = \"kbs:///default/credential/registry\"\n", kbs.URL))
	return proxy, cdh
}

// TestPrivateRegistryCredentialsFromKBS: a registry that needs basic auth
// is pulled through cocoon with credentials that cocoond fetched from the
// KBS (cdh.toml authenticated_registry_credentials_uri, containers-auth.json).
func TestPrivateRegistryCredentialsFromKBS(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy, cdh := startPrivateRegistry(t, ctx, env, reg)
	user, pass := proxy.user, proxy.pass
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{proxy.host},
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := startContainerdFor(t, ctx, env, cd)
	im, msg := pushTwoLayerImage(t, ctx, env, reg, "private/app", imageOptions{})
	ref := proxy.host + "/private/app:v1"

	// containerd itself needs the credentials for the manifest and config.
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--user", user+":"+pass, "--snapshotter", "cocoon", ref); err != nil {
		t.Fatalf("pull from the private registry: %v", err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", ref, containerID(t, "private"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("run: %q, %v", out, err)
	}
	if proxy.authedBlobs.Load() < int64(len(im.Manifest.Layers)) {
		t.Errorf("authenticated blob GETs = %d, want at least the %d layers cocoond fetched", proxy.authedBlobs.Load(), len(im.Manifest.Layers))
	}
	if strings.Contains(cd.Proc.Log(), pass) {
		t.Error("cocoond logged the registry password")
	}
	if !strings.Contains(cd.Proc.Log(), "registry credentials loaded") {
		t.Error("cocoond did not load the credentials from the KBS")
	}
}
