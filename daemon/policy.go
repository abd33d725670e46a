package daemon

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/signature"
)

// imagePolicy returns the image security policy gate for the pipeline, or
// nil when cdh.toml configures no policy (then nothing is verified, as
// upstream, and cocoond warns once).
func imagePolicy(ctx context.Context, at *attestation, reg *registry.Client, workDir string) pull.Policy {
	img := at.imageConfig()
	if img == nil || (deref(img.ImageSecurityPolicyURI) == "" && deref(img.ImageSecurityPolicy) == "") {
		log.G(ctx).Warn("no image security policy configured (cdh.toml [image] image_security_policy_uri or image_security_policy): image signatures are not verified")
		return nil
	}
	return &lazyPolicy{img: img, at: at, reg: reg, workDir: workDir}
}

// lazyPolicy fetches the policy, its keys, the sigstore configuration and
// registry credentials on the first pull, as image-rs does, so that
// cocoond starts even while the KBS is unreachable. A failed set-up is
// retried on the next pull. Signatures are fetched with the registry client
// layers are pulled with (proxy, certificates, mirrors, credentials).
type lazyPolicy struct {
	img     *config.ImageConfig
	at      *attestation
	reg     *registry.Client
	workDir string

	mu sync.Mutex
	v  *signature.Verifier
}

func (l *lazyPolicy) Check(ctx context.Context, imageRef string, manifestDigest digest.Digest) error {
	v, err := l.verifier(ctx)
	if err != nil {
		return fmt.Errorf("Image Client error: %w", err) //nolint:staticcheck // upstream's message, which clients match
	}
	return v.Check(ctx, imageRef, manifestDigest)
}

func (l *lazyPolicy) verifier(ctx context.Context) (*signature.Verifier, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.v != nil {
		return l.v, nil
	}
	getter := l.at.resources()
	o := signature.Options{Resources: getter, Registry: l.reg, WorkDir: l.workDir}
	var err error
	if u := deref(l.img.ImageSecurityPolicyURI); u != "" { // the URI wins over inline
		if o.Policy, err = fetchURI(ctx, getter, u); err != nil {
			return nil, fmt.Errorf("image security policy %s: %w", u, err)
		}
	} else {
		o.Policy = []byte(deref(l.img.ImageSecurityPolicy))
	}
	if u := deref(l.img.SigstoreConfigURI); u != "" {
		if o.SigstoreConfig, err = fetchURI(ctx, getter, u); err != nil {
			return nil, fmt.Errorf("sigstore config %s: %w", u, err)
		}
	} else if s := deref(l.img.SigstoreConfig); s != "" {
		o.SigstoreConfig = []byte(s)
	}
	if err := os.MkdirAll(l.workDir, 0o700); err != nil {
		return nil, err
	}
	v, err := signature.New(ctx, o)
	if err != nil {
		return nil, err
	}
	for _, w := range v.Warnings() {
		log.G(ctx).Warn("image security policy: " + w)
	}
	log.G(ctx).Info("image security policy loaded")
	l.v = v
	return v, nil
}
