package signature

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
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

// sigstoreBundle is the part of a sigstore bundle (v0.3) that is checked.
type sigstoreBundle struct {
	MediaType    string `json:"mediaType"`
	DSSEEnvelope *struct {
		Payload     string `json:"payload"`
		PayloadType string `json:"payloadType"`
		Signatures  []struct {
			Sig   string `json:"sig"`
			KeyID string `json:"keyid"`
		} `json:"signatures"`
	} `json:"dsseEnvelope"`
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
	payload, err := decodeBase64(env.Payload)
	if err != nil {
		return fmt.Errorf("%w: payload: %w", errBundle, err)
	}
	pae := dssePAE(env.PayloadType, payload)
	verified := false
	for _, s := range env.Signatures {
		sig, err := decodeBase64(s.Sig)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if verifySignature(k, pae, sig) == nil {
				verified = true
				break
			}
		}
		if verified {
			break
		}
	}
	if !verified {
		return fmt.Errorf("%w: no signature verifies with the policy key", errBundle)
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

// dssePAE is the DSSE v1 pre-authentication encoding, what is signed.
func dssePAE(payloadType string, payload []byte) []byte {
	var buf bytes.Buffer
	buf.WriteString("DSSEv1 ")
	buf.WriteString(strconv.Itoa(len(payloadType)))
	buf.WriteByte(' ')
	buf.WriteString(payloadType)
	buf.WriteByte(' ')
	buf.WriteString(strconv.Itoa(len(payload)))
	buf.WriteByte(' ')
	buf.Write(payload)
	return buf.Bytes()
}

func decodeBase64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
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

func verifySignature(key crypto.PublicKey, msg, sig []byte) error {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		var h hash.Hash
		switch k.Curve.Params().BitSize {
		case 384:
			h = sha512.New384()
		case 521:
			h = sha512.New()
		default:
			h = sha256.New()
		}
		h.Write(msg)
		if !ecdsa.VerifyASN1(k, h.Sum(nil), sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		sum := sha256.Sum256(msg)
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig)
	case ed25519.PublicKey:
		if !ed25519.Verify(k, msg, sig) {
			return errors.New("ed25519 signature does not verify")
		}
		return nil
	default:
		return fmt.Errorf("unsupported public key type %T", key)
	}
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
