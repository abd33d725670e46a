package daemon

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/registry"
)

// decryptOptions gives the pipeline the KBS (for KEKs named by layer
// annotations) and local JWE private keys.
func decryptOptions(cfg DecryptionConfig, at *attestation) (decrypt.Options, error) {
	var o decrypt.Options
	if at != nil {
		o.Resources = at.resources()
	} else {
		o.Resources = noKBS{}
	}
	for _, f := range cfg.PrivateKeyFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return o, fmt.Errorf("decryption.private_key_files: %w", err)
		}
		o.PrivateKeys = append(o.PrivateKeys, b)
	}
	return o, nil
}

// imageConfig is cdh.toml's [image] section, or upstream's defaults.
func (at *attestation) imageConfig() *config.ImageConfig {
	if at != nil && at.cdh != nil && at.cdh.Image != nil {
		return at.cdh.Image
	}
	return nil
}

// registryOptions turns cocoond's [registry] settings and cdh.toml [image]
// (proxy, extra root certificates, registries configuration, credentials
// from the KBS) into registry client options.
func registryOptions(ctx context.Context, cfg Config, at *attestation) (registry.Options, error) {
	o := registry.Options{Insecure: cfg.Registry.Insecure, Retries: cfg.Registry.Retries}
	img := at.imageConfig()
	if img == nil {
		return o, nil
	}
	var to registry.TransportOptions
	if p := img.ImagePullProxy; p != nil {
		to.HTTPSProxy, to.HTTPProxy, to.NoProxy = deref(p.HTTPSProxy), deref(p.HTTPProxy), deref(p.NoProxy)
	}
	to.ExtraRootCAs = img.ExtraRootCertificates
	if _, err := registry.NewTransport(to); err != nil { // a bad certificate stops cocoond here
		return o, fmt.Errorf("cdh.toml [image]: %w", err)
	}
	o.Network = to
	rc := img.RegistryConfig
	if u := deref(img.RegistryConfigurationURI); u != "" { // the URI wins over the inline table
		b, err := fetchURI(ctx, at.resources(), u)
		if err != nil {
			return o, fmt.Errorf("cdh.toml registry_configuration_uri %s: %w", u, err)
		}
		var warnings []string
		if rc, warnings, err = config.ParseRegistriesConf(b); err != nil {
			return o, fmt.Errorf("registries configuration from %s: %w", u, err)
		}
		for _, w := range warnings {
			log.G(ctx).Warn(w)
		}
	}
	if rc != nil {
		o.Hosts = hostsFrom(rc)
	}
	if u := deref(img.AuthenticatedRegistryCredentialsURI); u != "" {
		o.Keychain = &kbsKeychain{uri: u, getter: at.resources()}
	}
	return o, nil
}

func hostsFrom(rc *config.RegistryConfig) *registry.Hosts {
	h := &registry.Hosts{}
	for _, r := range rc.Registries {
		rule := registry.HostRule{Prefix: r.Prefix, Location: r.Location, Insecure: r.Insecure, Blocked: r.Blocked}
		for _, m := range r.Mirrors {
			rule.Mirrors = append(rule.Mirrors, registry.Mirror{Location: m.Location, Insecure: m.Insecure})
		}
		h.Registries = append(h.Registries, rule)
	}
	return h
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// kbsKeychain reads containers-auth.json from the KBS (or a file:// path) on
// first use, as image-rs does lazily, and keeps it in memory only. A failed
// fetch is retried on the next pull.
type kbsKeychain struct {
	uri    string
	getter kbs.ResourceGetter

	mu   sync.Mutex
	auth *registry.AuthFile
	raw  []byte // the document auth was parsed from, for the lazy FUSE server
}

func (k *kbsKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), r)
}

func (k *kbsKeychain) ResolveContext(ctx context.Context, r authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.load(ctx); err != nil {
		return nil, err
	}
	return k.auth.Resolve(r)
}

// document returns the containers-auth.json document, fetching it on
// first use as ResolveContext does (one fetch serves both). The caller
// must not modify it.
func (k *kbsKeychain) document(ctx context.Context) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.load(ctx); err != nil {
		return nil, err
	}
	return k.raw, nil
}

func (k *kbsKeychain) load(ctx context.Context) error {
	if k.auth != nil {
		return nil
	}
	b, err := fetchURI(ctx, k.getter, k.uri)
	if err != nil {
		return fmt.Errorf("registry credentials (authenticated_registry_credentials_uri): %w", err)
	}
	auth, err := registry.ParseAuthFile(b)
	if err != nil {
		return err
	}
	k.auth, k.raw = auth, b
	log.G(ctx).WithField("uri", k.uri).Info("registry credentials loaded")
	return nil
}

// fetchURI reads a kbs:/// resource through the KBS or a file:// path, the
// two forms cdh.toml's *_uri settings take.
func fetchURI(ctx context.Context, getter kbs.ResourceGetter, uri string) ([]byte, error) {
	if p, ok := strings.CutPrefix(uri, "file://"); ok {
		return os.ReadFile(p)
	}
	if !strings.HasPrefix(uri, "kbs://") {
		return nil, fmt.Errorf("%q: want kbs:///repo/type/tag or file:///path", uri)
	}
	return getter.GetResource(ctx, uri)
}
