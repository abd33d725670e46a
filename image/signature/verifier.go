package signature

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/image"
	podsig "go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.yaml.in/yaml/v3"

	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/internal/ttlcache"
)

// ResourceGetter fetches a confidential resource, e.g. through the KBS. It
// resolves kbs:/// key paths in the policy.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Options configures a Verifier.
type Options struct {
	// Policy is containers-policy.json, already fetched. nil or empty means
	// no policy: Check always passes, as image-rs does.
	Policy []byte
	// Resources resolves kbs:/// keyPath and keyPaths values. It may be nil
	// when the policy has none.
	Resources ResourceGetter
	// SigstoreConfig is registries.d YAML (lookaside stores,
	// use-sigstore-attachments). May be nil.
	SigstoreConfig []byte
	// Registry is the registry client layer pulls use. Signature, bundle
	// and lookaside fetches go through its configuration: proxy, extra
	// root certificates, mirrors and remapping, plain-HTTP registries and
	// credentials. nil means an anonymous client with no configuration.
	Registry *registry.Client
	// WorkDir is a private directory for materialised public keys, the
	// registries.d directory and the auth file. Required with a policy.
	WorkDir string
}

// Verifier evaluates the policy. It is safe for concurrent use.
type Verifier struct {
	defaults []*requirement
	docker   map[string][]*requirement
	warnings []string

	sys     types.SystemContext // template; Check copies it
	reg     *registry.Client
	workDir string

	// verdicts holds each final verdict, nil (allowed) or a *RejectedError,
	// per (reference, digest): one evaluation at a time per key, bounded
	// (finished verdicts are forgotten when full and recomputed on demand).
	verdicts *ttlcache.Cache[string, struct{}]
}

// maxVerdicts bounds the verdict cache.
const maxVerdicts = 4096

// verdictLifetime keeps final verdicts until evicted and nothing else: a
// failure to evaluate (network, context) is not a verdict.
func verdictLifetime(_ struct{}, err error) time.Duration {
	var rej *RejectedError
	if err != nil && (!errors.As(err, &rej) || rej.transient) {
		return 0
	}
	return ttlcache.Forever
}

// requirement is one evaluated rule: its type and, for signature rules, the
// single-rule policy go.podman.io/image/v5 evaluates.
type requirement struct {
	typ    string
	deny   string
	policy *podsig.Policy     // signedBy, sigstoreSigned
	keys   []crypto.PublicKey // sigstoreSigned: for cosign v3 bundles
}

// New parses and validates the policy, materialises its keys (fetching
// kbs:/// ones) and prepares the registry configuration. Warnings about the
// policy are logged and available from Warnings.
func New(ctx context.Context, o Options) (*Verifier, error) {
	v := &Verifier{reg: o.Registry, verdicts: ttlcache.New[string](ttlcache.Options[struct{}]{
		Lifetime:   verdictLifetime,
		MaxEntries: maxVerdicts,
	})}
	if v.reg == nil {
		v.reg = registry.New(registry.Options{})
	}
	if len(strings.TrimSpace(string(o.Policy))) == 0 {
		return v, nil
	}
	p, err := parsePolicy(o.Policy)
	if err != nil {
		return nil, err
	}
	v.warnings = p.Warnings
	for _, w := range p.Warnings {
		log.G(ctx).WithField("warning", w).Warn("image security policy")
	}
	if o.WorkDir == "" {
		return nil, errors.New("image signature: Options.WorkDir is required with a policy")
	}
	for _, d := range []string{"keys", "registries.d", "certs"} {
		if err := os.MkdirAll(filepath.Join(o.WorkDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("image signature: create work dir: %w", err)
		}
	}
	m := materialiser{ctx: ctx, res: o.Resources, dir: filepath.Join(o.WorkDir, "keys")}
	if v.defaults, err = m.requirements(p.Default); err != nil {
		return nil, err
	}
	v.docker = map[string][]*requirement{}
	for scope, reqs := range p.Docker {
		if v.docker[scope], err = m.requirements(reqs); err != nil {
			return nil, err
		}
	}
	if err := v.prepareSystemContext(o); err != nil {
		return nil, err
	}
	return v, nil
}

// Warnings returns the policy problems New found (scopes that never match,
// ignored transports, rules that always deny).
func (v *Verifier) Warnings() []string { return append([]string(nil), v.warnings...) }

// Enabled reports whether a policy is configured.
func (v *Verifier) Enabled() bool { return v != nil && v.defaults != nil }

// Check evaluates the policy for imageRef pinned to manifestDigest. It
// returns nil when the image is allowed, a *RejectedError when the policy
// refuses it, and another error when the evaluation could not be done
// (registry unreachable). Verdicts are cached per (reference, digest).
func (v *Verifier) Check(ctx context.Context, imageRef string, manifestDigest digest.Digest) error {
	if !v.Enabled() {
		return nil
	}
	if err := manifestDigest.Validate(); err != nil {
		return fmt.Errorf("image signature: manifest digest %q: %w", manifestDigest, err)
	}
	key := imageRef + "\x00" + manifestDigest.String()
	_, err := v.verdicts.Get(ctx, key, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, v.evaluate(ctx, imageRef, manifestDigest)
	})
	return err
}

func (v *Verifier) evaluate(ctx context.Context, imageRef string, dgst digest.Digest) error {
	named, err := reference.ParseNormalizedNamed(imageRef)
	if err != nil {
		return fmt.Errorf("image signature: parse reference %q: %w", imageRef, err)
	}
	if _, ok := named.(reference.Canonical); ok {
		// repo:tag@digest: the digest is what is pulled.
		if _, tagged := named.(reference.NamedTagged); tagged {
			named, err = reference.WithDigest(reference.TrimNamed(named), named.(reference.Canonical).Digest())
			if err != nil {
				return fmt.Errorf("image signature: reference %q: %w", imageRef, err)
			}
		}
	}
	named = reference.TagNameOnly(named)
	ref, err := docker.NewReference(named)
	if err != nil {
		return fmt.Errorf("image signature: reference %q: %w", imageRef, err)
	}
	reqs := v.requirementsFor(ref)
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("image", named.String()).WithField("manifest", dgst.String()))

	// Rules that need no signature first: no registry round trip for them.
	needSignatures := false
	for _, r := range reqs {
		switch {
		case r.typ == typeReject:
			return &RejectedError{Rule: typeReject, Image: named.String(), Reason: "policy rule reject"}
		case r.deny != "":
			return &RejectedError{Rule: r.typ, Image: named.String(), Reason: r.deny}
		case r.typ != typeAccept:
			needSignatures = true
		}
	}
	if !needSignatures {
		log.G(ctx).Debug("image allowed by policy without signature checks")
		return nil
	}

	// The locations layers are pulled from (mirrors, then the possibly
	// remapped original) are where signatures are looked up too.
	repos, err := v.reg.Repositories(named.String())
	if err != nil {
		return fmt.Errorf("image signature: %w", err)
	}
	sys, cleanup, err := v.systemContext(ctx, named, repos)
	if err != nil {
		return err
	}
	defer cleanup()
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return fmt.Errorf("image signature: open %s: %w", named, err)
	}
	defer src.Close()
	unparsed := image.UnparsedInstance(src, &dgst)

	for _, r := range reqs {
		if r.typ == typeAccept {
			continue
		}
		reason, final := r.evaluate(ctx, unparsed)
		if reason == "" {
			continue
		}
		if r.typ == typeSigstore {
			v3reason, err := v.verifyBundles(ctx, repos, dgst, r.keys)
			if err != nil {
				return err
			}
			if v3reason == "" {
				log.G(ctx).Debug("sigstoreSigned satisfied by a cosign v3 bundle")
				continue
			}
			reason = reason + "; cosign v3 bundles: " + v3reason
		}
		log.G(ctx).WithField("rule", r.typ).WithField("reason", reason).Warn("image rejected by policy")
		return &RejectedError{Rule: r.typ, Image: named.String(), Reason: reason, transient: !final}
	}
	log.G(ctx).Debug("image allowed by policy")
	return nil
}

// evaluate runs one signature requirement through go.podman.io/image/v5. It
// returns the refusal reason ("" when satisfied) and whether the refusal is
// final: a policy or signature verdict, as opposed to a failure to read the
// manifest or the signatures, which also refuses (fail closed) but is not
// worth caching.
func (r *requirement) evaluate(ctx context.Context, img types.UnparsedImage) (reason string, final bool) {
	pc, err := podsig.NewPolicyContext(r.policy)
	if err != nil {
		return "policy context: " + err.Error(), false
	}
	defer func() { _ = pc.Destroy() }()
	ok, err := pc.IsRunningImageAllowed(ctx, img)
	if ok {
		return "", true
	}
	if err == nil {
		return "refused", true
	}
	var prErr podsig.PolicyRequirementError
	var sigErr podsig.InvalidSignatureError
	final = errors.As(err, &prErr) || errors.As(err, &sigErr)
	return err.Error(), final
}

// requirementsFor picks the requirements for ref: the full reference, its
// namespaces (longest first, then *.domain wildcards), "", then default.
func (v *Verifier) requirementsFor(ref types.ImageReference) []*requirement {
	if r, ok := v.docker[ref.PolicyConfigurationIdentity()]; ok {
		return r
	}
	for _, ns := range ref.PolicyConfigurationNamespaces() {
		if r, ok := v.docker[ns]; ok {
			return r
		}
	}
	if r, ok := v.docker[""]; ok {
		return r
	}
	return v.defaults
}

// materialiser turns parsed requirements into evaluable ones: kbs:/// keys
// are fetched and written under dir, image-rs' PEM keyData is re-encoded
// the way go.podman.io/image/v5 wants it.
type materialiser struct {
	ctx   context.Context
	res   ResourceGetter
	dir   string
	cache map[string]string // uri -> local path
}

func (m *materialiser) requirements(raws []rawRequirement) ([]*requirement, error) {
	out := make([]*requirement, 0, len(raws))
	for _, raw := range raws {
		r, err := m.requirement(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (m *materialiser) requirement(raw rawRequirement) (*requirement, error) {
	r := &requirement{typ: raw.Type, deny: raw.Deny}
	if r.deny != "" || (r.typ != typeSignedBy && r.typ != typeSigstore) {
		return r, nil
	}
	fields := make(map[string]json.RawMessage, len(raw.Fields))
	for k, v := range raw.Fields {
		fields[k] = v
	}
	if v, ok := fields["keyPath"]; ok {
		var p string
		_ = json.Unmarshal(v, &p)
		local, err := m.localPath(p)
		if err != nil {
			return nil, err
		}
		fields["keyPath"], _ = json.Marshal(local)
	}
	if v, ok := fields["keyPaths"]; ok {
		var ps []string
		_ = json.Unmarshal(v, &ps)
		for i, p := range ps {
			local, err := m.localPath(p)
			if err != nil {
				return nil, err
			}
			ps[i] = local
		}
		fields["keyPaths"], _ = json.Marshal(ps)
	}
	if r.typ == typeSigstore {
		pem, err := m.sigstoreKey(fields)
		if err != nil {
			return nil, err
		}
		// go.podman.io/image/v5 wants base64 keyData; image-rs the PEM
		// text itself. Always hand the library base64 of the PEM.
		if _, ok := fields["keyData"]; ok {
			fields["keyData"], _ = json.Marshal(base64.StdEncoding.EncodeToString(pem))
		}
		key, err := parsePublicKey(pem)
		if err != nil {
			return nil, fmt.Errorf("%w: sigstoreSigned key: %w", ErrInvalidPolicy, err)
		}
		r.keys = []crypto.PublicKey{key}
		if _, ok := fields["signedIdentity"]; !ok {
			// image-rs does not check the identity when none is given;
			// the closest go.podman.io/image/v5 rule is the repository.
			fields["signedIdentity"] = json.RawMessage(`{"type":"matchRepository"}`)
		}
	}
	req, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("image signature: encode requirement: %w", err)
	}
	pol, err := podsig.NewPolicyFromBytes([]byte(`{"default":[` + string(req) + `]}`))
	if err != nil {
		return nil, fmt.Errorf("%w: %s requirement: %w", ErrInvalidPolicy, r.typ, err)
	}
	r.policy = pol
	return r, nil
}

// sigstoreKey returns the PEM public key of a sigstoreSigned requirement
// whose keyPath, if any, is already local.
func (m *materialiser) sigstoreKey(fields map[string]json.RawMessage) ([]byte, error) {
	if v, ok := fields["keyPath"]; ok {
		var p string
		_ = json.Unmarshal(v, &p)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("image signature: read sigstoreSigned key: %w", err)
		}
		return b, nil
	}
	var s string
	_ = json.Unmarshal(fields["keyData"], &s)
	if strings.Contains(s, "-----BEGIN") {
		return []byte(s), nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: sigstoreSigned keyData is neither PEM nor base64 of PEM", ErrInvalidPolicy)
	}
	return b, nil
}

// localPath resolves a key path: kbs:// URIs are fetched and written under
// m.dir, file:// is stripped, anything else is a local path.
func (m *materialiser) localPath(p string) (string, error) {
	switch {
	case strings.HasPrefix(p, "kbs://") || strings.HasPrefix(p, "kbs+"):
		if local, ok := m.cache[p]; ok {
			return local, nil
		}
		if m.res == nil {
			return "", fmt.Errorf("image signature: key %s needs a KBS but none is configured", p)
		}
		b, err := m.res.GetResource(m.ctx, p)
		if err != nil {
			return "", fmt.Errorf("image signature: fetch key %s: %w", p, err)
		}
		sum := sha256.Sum256([]byte(p))
		local := filepath.Join(m.dir, hex.EncodeToString(sum[:]))
		if err := os.WriteFile(local, b, 0o600); err != nil {
			return "", fmt.Errorf("image signature: write key %s: %w", p, err)
		}
		if m.cache == nil {
			m.cache = map[string]string{}
		}
		m.cache[p] = local
		return local, nil
	case strings.HasPrefix(p, "file://"):
		return strings.TrimPrefix(p, "file://"), nil
	case strings.Contains(p, "://"):
		return "", fmt.Errorf("%w: key URI scheme of %q not supported", ErrInvalidPolicy, p)
	default:
		return p, nil
	}
}

// registriesNamespace is one registries.d entry (the keys we read or set).
type registriesNamespace struct {
	Lookaside              string `yaml:"lookaside,omitempty"`
	LookasideStaging       string `yaml:"lookaside-staging,omitempty"`
	SigStore               string `yaml:"sigstore,omitempty"`
	SigStoreStaging        string `yaml:"sigstore-staging,omitempty"`
	UseSigstoreAttachments *bool  `yaml:"use-sigstore-attachments,omitempty"`
}

type registriesConfig struct {
	DefaultDocker *registriesNamespace           `yaml:"default-docker,omitempty"`
	Docker        map[string]registriesNamespace `yaml:"docker,omitempty"`
}

// registriesD merges the sigstore config with cocoon's defaults: cosign
// attachments are looked up everywhere unless an entry says otherwise.
func registriesD(sigstoreConfig []byte) ([]byte, error) {
	var c registriesConfig
	if len(sigstoreConfig) > 0 {
		if err := yaml.Unmarshal(sigstoreConfig, &c); err != nil {
			return nil, fmt.Errorf("image signature: parse sigstore config: %w", err)
		}
	}
	yes := true
	if c.DefaultDocker == nil {
		c.DefaultDocker = &registriesNamespace{}
	}
	if c.DefaultDocker.UseSigstoreAttachments == nil {
		c.DefaultDocker.UseSigstoreAttachments = &yes
	}
	for k, ns := range c.Docker {
		if ns.UseSigstoreAttachments == nil {
			ns.UseSigstoreAttachments = &yes
			c.Docker[k] = ns
		}
	}
	return yaml.Marshal(&c)
}

func (v *Verifier) prepareSystemContext(o Options) error {
	dir := o.WorkDir
	rd, err := registriesD(o.SigstoreConfig)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		filepath.Join(dir, "registries.d", "cocoon.yaml"): rd,
	}
	if pem := strings.Join(v.reg.Network().ExtraRootCAs, "\n"); pem != "" {
		files[filepath.Join(dir, "certs", "extra-roots.crt")] = []byte(pem)
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return fmt.Errorf("image signature: write %s: %w", filepath.Base(p), err)
		}
	}
	v.workDir = dir
	v.sys = types.SystemContext{
		RegistriesDirPath:       filepath.Join(dir, "registries.d"),
		DockerCertPath:          filepath.Join(dir, "certs"),
		DockerRegistryUserAgent: "cocoon",
		// The registry client's proxy, never the environment's.
		DockerProxy: v.reg.Proxy,
	}
	return nil
}

// systemContext returns the go.podman.io/image/v5 settings for one
// evaluation of named: a registries.conf that sends named to exactly the
// locations the registry client uses for it, and an auth file with the
// client's credentials for each of them. cleanup removes both files.
func (v *Verifier) systemContext(ctx context.Context, named reference.Named, repos []name.Repository) (*types.SystemContext, func(), error) {
	dir, err := os.MkdirTemp(v.workDir, "eval-")
	if err != nil {
		return nil, nil, fmt.Errorf("image signature: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	conf, auth, err := v.registrySettings(ctx, named, repos)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "registries.conf"), conf, 0o600)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "auth.json"), auth, 0o600)
	}
	if err == nil {
		err = os.Mkdir(filepath.Join(dir, "registries.conf.d"), 0o700)
	}
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("image signature: registry settings for %s: %w", named.Name(), err)
	}
	sys := v.sys
	sys.SystemRegistriesConfPath = filepath.Join(dir, "registries.conf")
	sys.SystemRegistriesConfDirPath = filepath.Join(dir, "registries.conf.d")
	sys.AuthFilePath = filepath.Join(dir, "auth.json")
	return &sys, cleanup, nil
}

// registrySettings renders the registry client's view of named as
// registries.conf (one rule: mirrors, then the original location) and
// containers-auth.json (credentials per location).
func (v *Verifier) registrySettings(ctx context.Context, named reference.Named, repos []name.Repository) (conf, auth []byte, err error) {
	type entry struct {
		Auth          string `json:"auth,omitempty"`
		IdentityToken string `json:"identitytoken,omitempty"`
	}
	auths := map[string]entry{}
	var b strings.Builder
	loc := func(r name.Repository) string {
		host := r.RegistryStr()
		if host == name.DefaultRegistry {
			host = "docker.io"
		}
		return host + "/" + r.RepositoryStr()
	}
	for _, r := range repos {
		a, err := authn.Resolve(ctx, v.reg.Keychain(), r)
		if err != nil {
			return nil, nil, fmt.Errorf("credentials for %s: %w", r, err)
		}
		cfg, err := authn.Authorization(ctx, a)
		if err != nil {
			return nil, nil, fmt.Errorf("credentials for %s: %w", r, err)
		}
		e := entry{IdentityToken: cfg.IdentityToken}
		switch {
		case cfg.Username != "" || cfg.Password != "":
			e.Auth = base64.StdEncoding.EncodeToString([]byte(cfg.Username + ":" + cfg.Password))
		case cfg.Auth != "":
			e.Auth = cfg.Auth
		}
		if e != (entry{}) {
			auths[loc(r)] = e
		}
	}
	last := repos[len(repos)-1]
	fmt.Fprintf(&b, "[[registry]]\nprefix = %q\nlocation = %q\ninsecure = %t\n", named.Name(), loc(last), v.reg.Insecure(last.RegistryStr()))
	for _, m := range repos[:len(repos)-1] {
		fmt.Fprintf(&b, "[[registry.mirror]]\nlocation = %q\ninsecure = %t\n", loc(m), v.reg.Insecure(m.RegistryStr()))
	}
	auth, err = json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		return nil, nil, err
	}
	return []byte(b.String()), auth, nil
}
