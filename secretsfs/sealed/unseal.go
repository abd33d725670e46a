package sealed

import (
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// DefaultKeyDir is where upstream CDH looks for a kid that is not a
// resource URI (cdh.toml [[credentials]] usually provisions it).
const DefaultKeyDir = "/run/confidential-containers/cdh/sealed-secret"

// maxJWKSize bounds a verification key file or resource.
const maxJWKSize = 64 << 10

// Unsealer verifies and resolves sealed secrets. The zero value has no
// key source and refuses every signed secret; configure Resources (kbs:///
// kids, vault secrets, the kbs envelope provider) and/or local Credentials.
// It is safe for concurrent use once configured; it does not cache.
type Unsealer struct {
	// Resources fetches kbs:/// resources: kid keys, vault secrets and the
	// kbs envelope provider's key-encryption keys.
	Resources kbs.ResourceGetter
	// Credentials maps a kid that is not a resource URI to a JWK file.
	Credentials map[string]string
	// KeyDir, when set, resolves a kid absent from Credentials as the file
	// KeyDir/<kid> (upstream: DefaultKeyDir); the kid may not leave KeyDir.
	KeyDir string
	// SkipVerification accepts unsigned secrets and skips signature checks
	// (cdh.toml skip_sealed_secret_verification = true).
	SkipVerification bool
	// Providers are the envelope providers by name. Nil means "kbs" over
	// Resources (when set) only.
	Providers map[string]EnvelopeProvider
}

// Open parses a sealed secret, verifies its signature (unless
// SkipVerification) and decodes its payload. It does not resolve it.
func (u *Unsealer) Open(ctx context.Context, sealed string) (*Secret, error) {
	var payload []byte
	if u.SkipVerification {
		var err error
		if payload, err = parseUnsigned(sealed); err != nil {
			return nil, err
		}
	} else {
		j, err := Parse(sealed)
		if err != nil {
			return nil, err
		}
		pub, err := u.verificationKey(ctx, j.Header.Kid)
		if err != nil {
			return nil, err
		}
		if err := j.Verify(pub); err != nil {
			return nil, err
		}
		payload = j.Payload
	}
	return ParsePayload(payload)
}

// Unseal verifies and resolves a sealed secret and returns its plaintext,
// which the caller owns.
func (u *Unsealer) Unseal(ctx context.Context, sealed []byte) ([]byte, error) {
	s, err := u.Open(ctx, string(sealed))
	if err != nil {
		return nil, err
	}
	return u.Resolve(ctx, s)
}

// Resolve returns the plaintext of a verified payload.
func (u *Unsealer) Resolve(ctx context.Context, s *Secret) ([]byte, error) {
	if s.Version != Version {
		return nil, partErr(PartPayload, "version %q is not %s", s.Version, Version)
	}
	switch {
	case s.Vault != nil:
		v := s.Vault
		// Upstream's vault provider names are ASCII case-insensitive.
		if !asciiEqualFold(v.Provider, ProviderKBS) {
			return nil, partErr(PartProvider, "vault provider %q is not supported (only %s)", v.Provider, ProviderKBS)
		}
		if u.Resources == nil {
			return nil, partErr(PartProvider, "vault provider kbs: no KBS configured")
		}
		if _, err := kbs.ParseResourceURI(v.Name); err != nil {
			return nil, partErr(PartPayload, "vault name: %w", err)
		}
		pt, err := u.Resources.GetResource(ctx, v.Name)
		if err != nil {
			return nil, &Error{Part: PartProvider, Err: fmt.Errorf("vault provider kbs: %w", err)}
		}
		log.G(ctx).WithField("resource", v.Name).Debug("sealed: vault secret resolved")
		return pt, nil
	case s.Envelope != nil:
		e := s.Envelope
		p := u.provider(e.Provider)
		if p == nil {
			return nil, partErr(PartProvider, "envelope provider %q is not configured", e.Provider)
		}
		wrapped, err := base64.StdEncoding.DecodeString(e.EncryptedKey)
		if err != nil {
			return nil, partErr(PartPayload, "decode encrypted_key: %w", err)
		}
		dek, err := p.UnwrapKey(ctx, wrapped, e.KeyID, e.Annotations)
		if err != nil {
			return nil, &Error{Part: PartProvider, Err: fmt.Errorf("envelope provider %s: %w", e.Provider, err)}
		}
		defer clear(dek)
		pt, err := openEnvelope(dek, e)
		if err != nil {
			return nil, partErr(PartPayload, "envelope: %w", err)
		}
		log.G(ctx).WithFields(log.Fields{"provider": e.Provider, "key_id": e.KeyID}).Debug("sealed: envelope secret resolved")
		return pt, nil
	}
	return nil, partErr(PartPayload, "neither vault nor envelope")
}

// provider finds an envelope provider by name, ASCII case-insensitively
// as upstream matches provider names.
func (u *Unsealer) provider(name string) EnvelopeProvider {
	if u.Providers != nil {
		if p, ok := u.Providers[name]; ok {
			return p
		}
		for n, p := range u.Providers {
			if asciiEqualFold(n, name) {
				return p
			}
		}
		return nil
	}
	if asciiEqualFold(name, ProviderKBS) && u.Resources != nil {
		return &KBSProvider{Resources: u.Resources}
	}
	return nil
}

// isResourceURI reports whether kid names a KBS resource (kbs:// or
// kbs+plugin://, the scheme in any ASCII case), as upstream decides.
func isResourceURI(kid string) bool {
	return hasASCIIPrefixFold(kid, "kbs://") || hasASCIIPrefixFold(kid, "kbs+")
}

func hasASCIIPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && asciiEqualFold(s[:len(prefix)], prefix)
}

// asciiEqualFold compares ASCII case-insensitively (strum's
// ascii_case_insensitive); unlike strings.EqualFold, no Unicode folding
// (the Kelvin sign is not a "k").
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func (u *Unsealer) verificationKey(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	var raw []byte
	switch {
	case isResourceURI(kid):
		if u.Resources == nil {
			return nil, partErr(PartKidFetch, "kid %s: no KBS configured", kid)
		}
		b, err := u.Resources.GetResource(ctx, kid)
		if err != nil {
			return nil, &Error{Part: PartKidFetch, Err: fmt.Errorf("kid %s: %w", kid, err)}
		}
		raw = b
	default:
		b, err := u.localKey(kid)
		if err != nil {
			return nil, &Error{Part: PartKidFetch, Err: fmt.Errorf("kid %q: %w", kid, err)}
		}
		raw = b
	}
	if len(raw) > maxJWKSize {
		return nil, partErr(PartKey, "kid %s: key is %d bytes, more than %d", kid, len(raw), maxJWKSize)
	}
	pub, err := ParsePublicJWK(raw)
	if err != nil {
		return nil, &Error{Part: PartKey, Err: fmt.Errorf("kid %s: %w", kid, err)}
	}
	return pub, nil
}

// errUnknownKid: neither Credentials nor KeyDir has the kid.
var errUnknownKid = errors.New("unknown kid: not a resource URI and no local credential configured")

func (u *Unsealer) localKey(kid string) ([]byte, error) {
	if p, ok := u.Credentials[kid]; ok {
		return os.ReadFile(p)
	}
	if u.KeyDir == "" {
		return nil, errUnknownKid
	}
	root, err := os.OpenRoot(u.KeyDir)
	if err != nil {
		return nil, fmt.Errorf("open key directory: %w", err)
	}
	defer root.Close()
	// os.Root refuses names (and symlinks) that leave KeyDir, as
	// upstream's canonicalize-and-check does.
	b, err := root.ReadFile(kid)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (%s has no such file)", errUnknownKid, u.KeyDir)
	}
	return b, err
}
