package signature

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	sigstoresig "github.com/sigstore/sigstore/pkg/signature"
	sigstoredsse "github.com/sigstore/sigstore/pkg/signature/dsse"
)

// Cosign v3 wire constants (see testdata/cosign-v3-*.json).
const (
	bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"
	inTotoPayloadType     = "application/vnd.in-toto+json"
	cosignSignPredicate   = "https://sigstore.dev/cosign/sign/v1"
	maxBundleSize         = 1 << 20
	maxBundles            = 16
)

// errBundle is wrapped by every cosign v3 bundle verification failure.
var errBundle = errors.New("cosign v3 bundle not verified")

// sigstoreBundle is the part of a sigstore bundle (v0.3) that is checked;
// the envelope is go-securesystemslib's DSSE type.
type sigstoreBundle struct {
	MediaType    string         `json:"mediaType"`
	DSSEEnvelope *dsse.Envelope `json:"dsseEnvelope"`
}

// inTotoStatement is an in-toto statement (v1 or v0.1).
type inTotoStatement struct {
	Type          string `json:"_type"`
	PredicateType string `json:"predicateType"`
	Subject       []struct {
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
}

// verifyBundle checks that a cosign v3 bundle carries a DSSE envelope signed
// by one of keys over an in-toto statement whose subject is manifestDigest
// and whose predicate is cosign's image signature. No transparency log or
// certificate is consulted (as image-rs: key-based only).
func verifyBundle(data []byte, keys []crypto.PublicKey, manifestDigest digest.Digest) error {
	var b sigstoreBundle
	if err := json.Unmarshal(data, &b); err != nil {
		return fmt.Errorf("%w: parse bundle: %w", errBundle, err)
	}
	if !strings.HasPrefix(b.MediaType, bundleMediaTypePrefix) {
		return fmt.Errorf("%w: media type %q is not a sigstore bundle", errBundle, b.MediaType)
	}
	env := b.DSSEEnvelope
	if env == nil {
		return fmt.Errorf("%w: no DSSE envelope", errBundle)
	}
	if env.PayloadType != inTotoPayloadType {
		return fmt.Errorf("%w: payload type %q is not in-toto", errBundle, env.PayloadType)
	}
	payload, err := verifyEnvelope(env, keys)
	if err != nil {
		return fmt.Errorf("%w: %w", errBundle, err)
	}
	// Only signed bytes are interpreted from here on.
	var st inTotoStatement
	if err := json.Unmarshal(payload, &st); err != nil {
		return fmt.Errorf("%w: parse statement: %w", errBundle, err)
	}
	if st.Type != "https://in-toto.io/Statement/v1" && st.Type != "https://in-toto.io/Statement/v0.1" {
		return fmt.Errorf("%w: statement type %q", errBundle, st.Type)
	}
	if st.PredicateType != cosignSignPredicate {
		return fmt.Errorf("%w: predicate %q is not a cosign image signature", errBundle, st.PredicateType)
	}
	for _, sub := range st.Subject {
		if sub.Digest[manifestDigest.Algorithm().String()] == manifestDigest.Encoded() {
			return nil
		}
	}
	return fmt.Errorf("%w: statement subject does not name manifest %s", errBundle, manifestDigest)
}

// parsePublicKey parses a PEM (PKIX) public key: ECDSA, RSA or ed25519, the
// key types cosign makes or accepts.
func parsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	switch k.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported public key type %T", k)
	}
}

// verifyEnvelope returns the payload of env when one of its signatures
// verifies with one of keys. PAE and the signature check are the libraries':
// go-securesystemslib's DSSE envelope verifier over sigstore verifiers
// chosen per key as cosign v3 chooses them when it signs a bundle with a key
// (signature.LoadDefaultVerifier: ECDSA P-256/384/521 with SHA-256/384/512,
// RSA 2048/3072/4096 PKCS#1 v1.5 with SHA-256, ed25519).
//
// Each signature is checked as an envelope of its own, so that, as before,
// any one good signature carries the envelope: the library's verifier gives
// up on the whole envelope at the first signature that is not base64. Key
// IDs are dropped: they are hints, and the policy's keys are what is trusted.
func verifyEnvelope(env *dsse.Envelope, keys []crypto.PublicKey) ([]byte, error) {
	verifiers := make([]dsse.Verifier, 0, len(keys))
	for _, k := range keys {
		v, err := sigstoresig.LoadDefaultVerifier(k)
		if err != nil {
			continue // a key type cosign cannot sign bundles with
		}
		verifiers = append(verifiers, &sigstoredsse.VerifierAdapter{SignatureVerifier: v, Pub: k})
	}
	if len(verifiers) > 0 {
		ev, err := dsse.NewEnvelopeVerifier(verifiers...)
		if err != nil {
			return nil, err
		}
		for _, s := range env.Signatures {
			one := dsse.Envelope{PayloadType: env.PayloadType, Payload: env.Payload, Signatures: []dsse.Signature{{Sig: s.Sig}}}
			// Local keys only: the context carries no deadline worth having.
			if _, payload, err := ev.VerifyAndDecode(context.Background(), &one); err == nil {
				return payload, nil
			}
		}
	}
	return nil, errors.New("no signature verifies with the policy key")
}

// verifyBundles looks for a cosign v3 bundle of manifestDigest (referrers
// API, then the `sha256-<hex>` tag fallback) that verifies with one of keys,
// at each location the registry client pulls the image from (mirrors first).
// It returns "" when one does, otherwise the refusal reason. When no
// location could be asked (errors other than "not found"), the error is
// returned.
func (v *Verifier) verifyBundles(ctx context.Context, repos []name.Repository, manifestDigest digest.Digest, keys []crypto.PublicKey) (string, error) {
	if len(keys) == 0 {
		return "no key", nil
	}
	base, err := v.reg.BaseTransport()
	if err != nil {
		return "", fmt.Errorf("image signature: %w", err)
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(v.reg.Keychain()),
		remote.WithTransport(base),
		remote.WithUserAgent("cocoon"),
	}
	var reasons []string
	var errs []error
	for _, repo := range repos {
		reason, err := verifyBundlesAt(repo, manifestDigest, keys, opts)
		switch {
		case err != nil:
			errs = append(errs, err)
		case reason == "":
			return "", nil
		default:
			reasons = append(reasons, reason)
		}
	}
	if len(reasons) == 0 {
		return "", errors.Join(errs...)
	}
	return strings.Join(reasons, "; "), nil
}

func verifyBundlesAt(repo name.Repository, manifestDigest digest.Digest, keys []crypto.PublicKey, opts []remote.Option) (string, error) {
	var reasons []string
	seen := map[v1.Hash]bool{}
	try := func(idx v1.ImageIndex) (bool, error) {
		im, err := idx.IndexManifest()
		if err != nil {
			return false, fmt.Errorf("image signature: read referrers of %s: %w", manifestDigest, err)
		}
		n := 0
		for _, desc := range im.Manifests {
			if !strings.HasPrefix(desc.ArtifactType, bundleMediaTypePrefix) || seen[desc.Digest] {
				continue
			}
			if n++; n > maxBundles {
				break
			}
			seen[desc.Digest] = true
			data, err := fetchBundle(repo.Digest(desc.Digest.String()), opts)
			if err != nil {
				reasons = append(reasons, err.Error())
				continue
			}
			if err := verifyBundle(data, keys, manifestDigest); err != nil {
				reasons = append(reasons, err.Error())
				continue
			}
			return true, nil
		}
		return false, nil
	}

	d := repo.Digest(manifestDigest.String())
	idx, err := remote.Referrers(d, opts...)
	if err != nil && !isNotFound(err) {
		return "", fmt.Errorf("image signature: referrers of %s: %w", d, err)
	}
	if err == nil {
		if ok, err := try(idx); ok || err != nil {
			return "", err
		}
	}
	// A registry with a referrers API may still hold bundles that cosign
	// pushed with the tag scheme.
	tag := repo.Tag(strings.Replace(manifestDigest.String(), ":", "-", 1))
	idx, err = remote.Index(tag, opts...)
	switch {
	case err == nil:
		if ok, err := try(idx); ok || err != nil {
			return "", err
		}
	case !isNotFound(err):
		return "", fmt.Errorf("image signature: read %s: %w", tag, err)
	}
	if len(reasons) == 0 {
		return "no cosign v3 bundle found in " + repo.String(), nil
	}
	return strings.Join(reasons, "; "), nil
}

func fetchBundle(ref name.Digest, opts []remote.Option) ([]byte, error) {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("fetch bundle manifest %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read bundle manifest %s: %w", ref, err)
	}
	for _, l := range m.Layers {
		if !strings.HasPrefix(string(l.MediaType), bundleMediaTypePrefix) {
			continue
		}
		if l.Size > maxBundleSize {
			return nil, fmt.Errorf("bundle %s is too large (%d bytes)", l.Digest, l.Size)
		}
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("bundle layer %s: %w", l.Digest, err)
		}
		rc, err := layer.Compressed() // verifies the digest as it is read
		if err != nil {
			return nil, fmt.Errorf("fetch bundle %s: %w", l.Digest, err)
		}
		data, err := io.ReadAll(io.LimitReader(rc, maxBundleSize+1))
		cerr := rc.Close()
		if err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("fetch bundle %s: %w", l.Digest, err)
		}
		return data, nil
	}
	return nil, fmt.Errorf("manifest %s has no sigstore bundle layer", ref)
}

func isNotFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}
