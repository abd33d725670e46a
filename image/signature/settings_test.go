package signature

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	imgregistry "github.com/cocoon-cc/cocoon/image/registry"
)

// startRegistryWith serves a registry holding one unsigned image at
// coco/img:v1, with wrap around its handler and TLS when asked. opts push
// to it.
func startRegistryWith(t *testing.T, useTLS bool, wrap func(http.Handler) http.Handler, opts ...remote.Option) testRegistry {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	var srv *httptest.Server
	var nameOpts []name.Option
	if useTLS {
		srv = httptest.NewTLSServer(h)
		opts = append(opts, remote.WithTransport(srv.Client().Transport))
	} else {
		srv = httptest.NewServer(h)
		nameOpts = append(nameOpts, name.Insecure)
	}
	t.Cleanup(srv.Close)
	host := srv.Listener.Addr().String()
	repo, err := name.NewRepository(host+"/coco/img", nameOpts...)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(repo.Tag("v1"), img, opts...); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return testRegistry{srv: srv, host: host, repo: repo, digest: digest.Digest(d.String()), opts: opts}
}

// basicAuth refuses every request without the user's credentials.
func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// forwardProxy is a plain-HTTP forward proxy that sends requests for
// virtualHost to target; it counts what it forwarded.
type forwardProxy struct {
	url       string
	forwarded atomic.Int64
}

func startProxy(t *testing.T, virtualHost, target string) *forwardProxy {
	t.Helper()
	p := &forwardProxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL.Scheme = "http"
		r.Out.URL.Host = target
		r.Out.Host = target
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect || r.URL.Host != virtualHost {
			http.Error(w, "proxy: no route to "+r.Host, http.StatusBadGateway)
			return
		}
		p.forwarded.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// Signature checks reach registries exactly as layer pulls do: through
// the registry client's mirrors, proxy, extra root certificates and
// credentials. Each case has a registry reachable only with one setting;
// the same check with a client lacking the setting must fail.
func TestSignaturesUseRegistrySettings(t *testing.T) {
	key, keyPEM := newECKey(t)
	type setup struct {
		reg        testRegistry
		ref        string // what the image is pulled as
		with, wout imgregistry.Options
		check      func(t *testing.T) // extra assertion after the passing check
	}
	cases := map[string]func(t *testing.T) setup{
		"mirror": func(t *testing.T) setup {
			r := startRegistryWith(t, false, nil)
			// Nothing listens on port 1: only the mirror serves the image.
			logical := "127.0.0.1:1/coco"
			hosts := &imgregistry.Hosts{Registries: []imgregistry.HostRule{{
				Prefix: logical, Insecure: true,
				Mirrors: []imgregistry.Mirror{{Location: r.host + "/coco", Insecure: true}},
			}}}
			return setup{reg: r, ref: logical + "/img",
				with: imgregistry.Options{Hosts: hosts, Retries: 1, RetryBackoff: 1},
				wout: imgregistry.Options{Insecure: []string{"127.0.0.1:1"}, Retries: 1, RetryBackoff: 1}}
		},
		"remapped location": func(t *testing.T) setup {
			r := startRegistryWith(t, false, nil)
			logical := "127.0.0.1:1/elsewhere"
			hosts := &imgregistry.Hosts{Registries: []imgregistry.HostRule{{
				Prefix: logical, Location: r.host + "/coco", Insecure: true,
			}}}
			return setup{reg: r, ref: logical + "/img",
				with: imgregistry.Options{Hosts: hosts, Retries: 1, RetryBackoff: 1},
				wout: imgregistry.Options{Insecure: []string{"127.0.0.1:1"}, Retries: 1, RetryBackoff: 1}}
		},
		"proxy": func(t *testing.T) setup {
			r := startRegistryWith(t, false, nil)
			// registry.invalid does not resolve: only the proxy knows it.
			virtual := "registry.invalid:5000"
			p := startProxy(t, virtual, r.host)
			return setup{reg: r, ref: virtual + "/coco/img",
				with: imgregistry.Options{Insecure: []string{virtual}, Network: imgregistry.TransportOptions{HTTPProxy: p.url, HTTPSProxy: p.url}, Retries: 1, RetryBackoff: 1},
				wout: imgregistry.Options{Insecure: []string{virtual}, Retries: 1, RetryBackoff: 1},
				check: func(t *testing.T) {
					if p.forwarded.Load() == 0 {
						t.Fatal("the check passed without going through the proxy")
					}
				}}
		},
		"extra root certificate": func(t *testing.T) setup {
			r := startRegistryWith(t, true, nil)
			ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw}))
			return setup{reg: r, ref: r.host + "/coco/img",
				with: imgregistry.Options{Network: imgregistry.TransportOptions{ExtraRootCAs: []string{ca}}, Retries: 1, RetryBackoff: 1},
				wout: imgregistry.Options{Retries: 1, RetryBackoff: 1}}
		},
		"credentials": func(t *testing.T) setup {
			r := startRegistryWith(t, false, basicAuth("coco", "s3cret"),
				remote.WithAuth(&authn.Basic{Username: "coco", Password: "s3cret"}))
			auth, err := imgregistry.ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`,
				r.host, base64.StdEncoding.EncodeToString([]byte("coco:s3cret")))))
			if err != nil {
				t.Fatal(err)
			}
			return setup{reg: r, ref: r.host + "/coco/img",
				with: imgregistry.Options{Insecure: []string{r.host}, Keychain: auth, Retries: 1, RetryBackoff: 1},
				wout: imgregistry.Options{Insecure: []string{r.host}, Retries: 1, RetryBackoff: 1}}
		},
	}
	signers := map[string]func(t *testing.T, s setup){
		"cosign v2 signature": func(t *testing.T, s setup) { s.reg.signV2(t, key, s.reg.digest, s.ref) },
		"cosign v3 bundle":    func(t *testing.T, s setup) { s.reg.signV3(t, key, s.reg.digest) },
	}
	policy := []byte(fmt.Sprintf(`{"default":[{"type":"sigstoreSigned","keyData":%q}],"transports":{}}`, keyPEM))
	for cname, mk := range cases {
		for sname, sign := range signers {
			t.Run(cname+"/"+sname, func(t *testing.T) {
				s := mk(t)
				sign(t, s)
				ctx := context.Background()
				ref := s.ref + ":v1"
				without, err := New(ctx, Options{Policy: policy, Registry: imgregistry.New(s.wout), WorkDir: t.TempDir()})
				if err != nil {
					t.Fatal(err)
				}
				if err := without.Check(ctx, ref, s.reg.digest); err == nil {
					t.Fatal("Check passed with a registry client that cannot reach the registry")
				}
				with, err := New(ctx, Options{Policy: policy, Registry: imgregistry.New(s.with), WorkDir: t.TempDir()})
				if err != nil {
					t.Fatal(err)
				}
				if err := with.Check(ctx, ref, s.reg.digest); err != nil {
					t.Fatalf("Check with the pull settings: %v (reason: %s)", err, reason(err))
				}
				if s.check != nil {
					s.check(t)
				}
				// A signature of another manifest is still refused there.
				if err := with.Check(ctx, ref, digest.FromString("other")); err == nil || !strings.Contains(err.Error(), "sigstoreSigned") {
					t.Fatalf("Check of an unsigned manifest = %v, want a sigstoreSigned refusal", err)
				}
			})
		}
	}
}
