package registry

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

func TestAuthFileResolve(t *testing.T) {
	// The upstream image-rs example file.
	b, err := os.ReadFile(filepath.Join("testdata", "image-rs-auth.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseAuthFile(b)
	if err != nil {
		t.Fatal(err)
	}
	for ref, wantUser := range map[string]string{
		"docker.io/library/busybox": "liudalibj",
		"index.docker.io/x/y":       "liudalibj",
		"quay.io/a/b":               "liudalibj",
		"ghcr.io/a/b":               "",
	} {
		repo, _ := name.NewRepository(ref)
		a, err := f.Resolve(repo)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := a.Authorization()
		if cfg.Username != wantUser {
			t.Errorf("%s: user %q, want %q", ref, cfg.Username, wantUser)
		}
	}
}

func TestAuthFileMostSpecificWins(t *testing.T) {
	f, err := ParseAuthFile([]byte(`{"auths":{
		"reg.example:5000":{"username":"host","password":"p"},
		"reg.example:5000/team":{"auth":"dGVhbTpzZWNyZXQ="},
		"https://other.example/v1/":{"identitytoken":"tok"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]authn.AuthConfig{
		"reg.example:5000/team/app":  {Username: "team", Password: "secret"},
		"reg.example:5000/other/app": {Username: "host", Password: "p"},
		"other.example/x":            {IdentityToken: "tok"},
	} {
		repo, _ := name.NewRepository(ref)
		a, _ := f.Resolve(repo)
		got, _ := a.Authorization()
		if *got != want {
			t.Errorf("%s: %+v, want %+v", ref, *got, want)
		}
	}
	for _, bad := range []string{`{"auths":{"x":{"auth":"!!"}}}`, `{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}`, `not json`} {
		if _, err := ParseAuthFile([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestHostsLocations(t *testing.T) {
	h := &Hosts{Registries: []HostRule{
		{Prefix: "example.com/banned", Blocked: true},
		{Prefix: "mirror-test.com", Mirrors: []Mirror{{Location: "127.0.0.1:5000", Insecure: true}}},
		{Prefix: "remapping-test.com", Location: "127.0.0.1:5000", Insecure: true},
		{Location: "127.0.0.1:5000", Insecure: true},
	}}
	for repo, want := range map[string][]Location{
		"mirror-test.com/app":       {{"127.0.0.1:5000/app", true}, {"mirror-test.com/app", false}},
		"remapping-test.com/a/b":    {{"127.0.0.1:5000/a/b", true}},
		"127.0.0.1:5000/x":          {{"127.0.0.1:5000/x", true}},
		"example.com/bannedish/app": {{"example.com/bannedish/app", false}},
		"quay.io/x":                 {{"quay.io/x", false}},
	} {
		got, err := h.Locations(repo)
		if err != nil || len(got) != len(want) {
			t.Errorf("%s: %v %v, want %v", repo, got, err, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s[%d] = %v, want %v", repo, i, got[i], want[i])
			}
		}
	}
	if _, err := h.Locations("example.com/banned/app"); !errors.Is(err, ErrBlocked) {
		t.Errorf("blocked prefix: %v", err)
	}
	c := New(Options{Hosts: h})
	if _, err := c.Repositories("example.com/banned/app:1"); !errdefs.IsPermissionDenied(err) {
		t.Errorf("Repositories of a blocked image: %v", err)
	}
	repos, err := c.Repositories("mirror-test.com/app:1")
	if err != nil || len(repos) != 2 || repos[0].Scheme() != "http" || repos[1].String() != "mirror-test.com/app" {
		t.Errorf("Repositories = %v, %v", repos, err)
	}
}

func TestImageFromMirrorFallsBack(t *testing.T) {
	f := newFake()
	c := startFake(t, f)
	md, _ := f.image(t, randomBytes(t, 64))
	// The mirror (an unused loopback port) is down; the original serves.
	c = New(Options{Insecure: []string{f.host}, RetryBackoff: time.Millisecond, Retries: 1, Platform: c.opts.Platform,
		Hosts: &Hosts{Registries: []HostRule{{Prefix: f.host + "/a", Mirrors: []Mirror{{Location: "127.0.0.1:1/a", Insecure: true}}}}}})
	repos, err := c.Repositories(f.host + "/a/b:1")
	if err != nil || len(repos) != 2 {
		t.Fatalf("repos = %v %v", repos, err)
	}
	im, err := c.ImageFrom(context.Background(), repos, md)
	if err != nil {
		t.Fatal(err)
	}
	if im.Repository.String() != f.host+"/a/b" {
		t.Errorf("served by %s", im.Repository)
	}
	_, err = c.ImageFrom(context.Background(), repos[:1], md)
	if err == nil {
		t.Fatal("a down mirror alone served the image")
	}
}

func TestTransportTrustAndProxy(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	defer srv.Close()
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))

	plain, _ := NewTransport(TransportOptions{})
	if resp, err := (&http.Client{Transport: plain}).Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Error("an untrusted certificate was accepted")
	}
	trusting, err := NewTransport(TransportOptions{ExtraRootCAs: []string{caPEM}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: trusting}).Get(srv.URL)
	if err != nil {
		t.Fatalf("extra root not trusted: %v", err)
	}
	resp.Body.Close()
	if trusting.TLSClientConfig.MinVersion < tls.VersionTLS12 {
		t.Error("TLS below 1.2 allowed")
	}
	if _, err := NewTransport(TransportOptions{ExtraRootCAs: []string{"not a certificate"}}); err == nil || !strings.Contains(err.Error(), "extra_root_certificates[0]") {
		t.Errorf("bad PEM: %v", err)
	}

	var proxied int
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied++
		w.WriteHeader(200)
	}))
	defer proxy.Close()
	tr, _ := NewTransport(TransportOptions{HTTPProxy: proxy.URL, NoProxy: "skip.example"})
	req, _ := http.NewRequest("GET", "http://registry.example/v2/", nil)
	if resp, err := tr.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	if proxied != 1 {
		t.Errorf("request not sent through the proxy")
	}
	if u, _ := tr.Proxy(httptest.NewRequest("GET", "http://skip.example/v2/", nil)); u != nil {
		t.Errorf("no_proxy host proxied via %v", u)
	}
}
