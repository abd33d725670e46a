package registry

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/net/http/httpproxy"
)

// AuthFile is a containers-auth.json (or docker config.json) credentials
// store, as cdh.toml's authenticated_registry_credentials_uri names it. It
// implements authn.Keychain. Credentials are kept in memory only.
type AuthFile struct {
	auths map[string]authEntry // normalised registry host -> entry
}

type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// ParseAuthFile parses containers-auth.json. Keys may be a registry host,
// host/namespace, or a URL such as https://index.docker.io/v1/.
func ParseAuthFile(b []byte) (*AuthFile, error) {
	var doc struct {
		Auths map[string]authEntry `json:"auths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse registry auth file: %w", err)
	}
	f := &AuthFile{auths: map[string]authEntry{}}
	for k, e := range doc.Auths {
		if e.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
			if err != nil {
				return nil, fmt.Errorf("registry auth file: entry %q: auth is not base64", k)
			}
			user, pass, ok := strings.Cut(strings.TrimRight(string(dec), "\n"), ":")
			if !ok {
				return nil, fmt.Errorf("registry auth file: entry %q: auth is not user:password", k)
			}
			e.Username, e.Password = user, pass
		}
		f.auths[normaliseAuthKey(k)] = e
	}
	return f, nil
}

// normaliseAuthKey maps a key of the auth file to what Resolve looks up.
func normaliseAuthKey(k string) string {
	if u, err := url.Parse(k); err == nil && u.Host != "" {
		k = u.Host + strings.TrimSuffix(u.Path, "/")
	}
	k = strings.TrimSuffix(k, "/v1")
	switch k {
	case "index.docker.io", "registry-1.docker.io", "docker.io":
		return "docker.io"
	}
	return k
}

// Resolve implements authn.Keychain: the most specific key (host/namespace
// before host) wins; no entry means anonymous.
func (f *AuthFile) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host := normaliseAuthKey(r.RegistryStr())
	var candidates []string
	if repo, ok := r.(interface{ RepositoryStr() string }); ok {
		parts := strings.Split(repo.RepositoryStr(), "/")
		for i := len(parts); i > 0; i-- {
			candidates = append(candidates, host+"/"+strings.Join(parts[:i], "/"))
		}
	}
	candidates = append(candidates, host)
	for _, c := range candidates {
		if e, ok := f.auths[c]; ok {
			return authn.FromConfig(authn.AuthConfig{
				Username: e.Username, Password: e.Password,
				IdentityToken: e.IdentityToken, RegistryToken: e.RegistryToken,
			}), nil
		}
	}
	return authn.Anonymous, nil
}

// TransportOptions configure the HTTP transport to registries.
type TransportOptions struct {
	// HTTPSProxy, HTTPProxy and NoProxy as in [image.image_pull_proxy];
	// empty values mean no proxy (the environment is not consulted).
	HTTPSProxy, HTTPProxy, NoProxy string
	// ExtraRootCAs are PEM certificates trusted in addition to the system's.
	ExtraRootCAs []string
}

// NewTransport returns an HTTP transport with the proxy and trust settings.
func NewTransport(o TransportOptions) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	pc := &httpproxy.Config{HTTPSProxy: o.HTTPSProxy, HTTPProxy: o.HTTPProxy, NoProxy: o.NoProxy}
	proxy := pc.ProxyFunc()
	t.Proxy = func(r *http.Request) (*url.URL, error) { return proxy(r.URL) }
	if len(o.ExtraRootCAs) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for i, pem := range o.ExtraRootCAs {
			if !pool.AppendCertsFromPEM([]byte(pem)) {
				return nil, fmt.Errorf("extra_root_certificates[%d]: no PEM certificate found", i)
			}
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return t, nil
}

// Hosts is the registries configuration (cdh.toml [image.registry_config],
// registries.conf semantics as image-rs implements them): blocked prefixes,
// mirrors tried before the original location, remapped locations, and
// insecure (plain-HTTP) registries.
type Hosts struct {
	Registries []HostRule
}

// HostRule is one [[registry]] entry.
type HostRule struct {
	Prefix   string // matches reference prefixes (host[/path]); empty means Location
	Location string // replaces Prefix in the reference when set
	Insecure bool
	Blocked  bool
	Mirrors  []Mirror
}

// Mirror is one [[registry.mirror]].
type Mirror struct {
	Location string
	Insecure bool
}

// ErrBlocked reports a reference under a blocked prefix.
var ErrBlocked = errors.New("registry is blocked by the registries configuration")

// Location is one place to fetch a repository from.
type Location struct {
	Repository string // host[:port]/path
	Insecure   bool
}

// Locations returns, in order, where to fetch repository (host/path): the
// mirrors of the longest matching rule, then the (possibly remapped)
// original location.
func (h *Hosts) Locations(repository string) ([]Location, error) {
	var best *HostRule
	bestLen := -1
	for i := range h.Registries {
		r := &h.Registries[i]
		prefix := r.Prefix
		if prefix == "" {
			prefix = r.Location
		}
		if prefix == "" || !prefixMatches(repository, prefix) {
			continue
		}
		if len(prefix) > bestLen {
			best, bestLen = r, len(prefix)
		}
	}
	if best == nil {
		return []Location{{Repository: repository}}, nil
	}
	if best.Blocked {
		return nil, fmt.Errorf("%s: %w", repository, ErrBlocked)
	}
	prefix := best.Prefix
	if prefix == "" {
		prefix = best.Location
	}
	rest := strings.TrimPrefix(repository, prefix)
	var locs []Location
	for _, m := range best.Mirrors {
		locs = append(locs, Location{Repository: m.Location + rest, Insecure: m.Insecure})
	}
	orig := repository
	if best.Location != "" {
		orig = best.Location + rest
	}
	return append(locs, Location{Repository: orig, Insecure: best.Insecure}), nil
}

// prefixMatches reports whether prefix covers repository at a path boundary.
func prefixMatches(repository, prefix string) bool {
	if !strings.HasPrefix(repository, prefix) {
		return false
	}
	rest := repository[len(prefix):]
	return rest == "" || rest[0] == '/' || rest[0] == ':' || rest[0] == '@' || strings.HasSuffix(prefix, "/")
}
