// Package decrypt turns an ocicrypt-encrypted layer blob (media type
// "...+encrypted") back into the compressed layer it was made from, streaming.
//
// The layer key travels in the descriptor's annotations, wrapped either by
// the attestation-agent key provider (a KEK held by the KBS at the packet's
// kid, COCO_SPEC 6) or for JWE recipients (a locally configured private
// key, as imgcrypt does). The layer itself is AES-256-CTR with an
// HMAC-SHA256 over the ciphertext (ocicrypt's AES_256_CTR_HMAC_SHA256).
// Option formats are ocicrypt's blockcipher types; the streaming decryptor
// is the standard library's AES-CTR and HMAC, because ocicrypt's reader
// allocates and clears a buffer the size of every Read and runs about half
// as fast. Encryption (Encrypter) uses ocicrypt's blockcipher.
//
// Lazy pulls decrypt by range instead (UnwrapLayer, LayerKey.NewReaderAt):
// there the chunk digests of the eStargz TOC, checked by the caller after
// decryption and decompression, authenticate what is served, and the HMAC
// over the whole blob (HMACVerifier) is checked when the blob is complete.
//
// The chain of trust is: manifest -> encrypted blob digest (hashed here) ->
// HMAC keyed with the layer key (checked here) -> plaintext, which is then
// the one whose digest the wrapped private options record (PlainDigest):
// only the holder of the layer key can make an HMAC match, so a full pull
// does not hash the plaintext again (the Reader is its layer.Reader's
// Authenticator) -> diff ID (checked by the caller with image/layer).
// Nothing read from a Reader may be committed before Verify returned nil
// and the caller's diff ID check passed.
//
// This package must never log, persist or return key material: KEKs and
// layer keys live only in memory and are cleared when no longer needed.
package decrypt

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	_ "crypto/sha512" // register sha512 for digest.Algorithm
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"

	"github.com/cocoon-cc/cocoon/internal/hashio"

	"github.com/containerd/errdefs"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Annotations that carry encryption metadata on a layer descriptor.
const (
	AnnotationPubOpts          = "org.opencontainers.image.enc.pubopts"
	AnnotationKeysPrefix       = "org.opencontainers.image.enc.keys."
	AnnotationProviderPrefix   = AnnotationKeysPrefix + "provider."
	AnnotationAttestationAgent = AnnotationProviderPrefix + "attestation-agent"
	AnnotationJWE              = AnnotationKeysPrefix + "jwe"
)

// EncryptedSuffix ends the media type of every encrypted layer.
const EncryptedSuffix = "+encrypted"

// CipherAES256CTRHMACSHA256 is the only layer cipher ocicrypt defines.
const CipherAES256CTRHMACSHA256 = string(blockcipher.AES256CTR)

// Sizes fixed by the cipher.
const (
	LayerKeySize = 32
	NonceSize    = 16
	HMACSize     = 32
)

// ResourceGetter fetches KBS resources (KEKs) by kbs:/// URI; *kbs.Client
// implements it.
type ResourceGetter = kbs.ResourceGetter

// ErrHMACMismatch reports a ciphertext whose HMAC does not match the one in
// the layer's public options. It wraps errdefs.ErrFailedPrecondition.
var ErrHMACMismatch = fmt.Errorf("HMAC mismatch: the ciphertext was modified or does not belong to this layer key: %w", errdefs.ErrFailedPrecondition)

// ErrNotEncrypted reports a descriptor whose media type is not encrypted.
var ErrNotEncrypted = errors.New("layer is not encrypted")

// Options says where layer keys may come from.
type Options struct {
	// Resources fetches KEKs at an attestation-agent packet's kid
	// (kbs:///...). Nil disables the attestation-agent provider.
	Resources ResourceGetter
	// PrivateKeys are PEM, DER or JWK private keys for JWE recipients
	// (org.opencontainers.image.enc.keys.jwe). May be nil.
	PrivateKeys [][]byte
}

// IsEncrypted reports whether mediaType is an ocicrypt-encrypted layer.
func IsEncrypted(mediaType string) bool {
	return strings.HasSuffix(mediaType, EncryptedSuffix)
}

// PlainMediaType strips the +encrypted suffix; other media types are
// returned unchanged.
func PlainMediaType(mediaType string) string {
	return strings.TrimSuffix(mediaType, EncryptedSuffix)
}

// EncryptedMediaType appends +encrypted unless it is already there.
func EncryptedMediaType(mediaType string) string {
	if IsEncrypted(mediaType) {
		return mediaType
	}
	return mediaType + EncryptedSuffix
}

// Reader is the decrypted, still compressed, stream of one encrypted layer
// blob. It is not safe for concurrent use.
type Reader struct {
	layer       digest.Digest // encrypted blob digest, for messages
	blobSize    int64
	src         *hashio.Reader
	stream      cipher.Stream // AES-256-CTR keyed with the layer key
	mac         hash.Hash     // HMAC-SHA256 keyed with the layer key, over the ciphertext
	wantMAC     []byte        // from the public options
	plainDigest digest.Digest
	eof         bool
	err         error // sticky error returned by Read
	verified    bool
	verifyErr   error
}

// NewReader returns the decrypted (still compressed) layer stream of an
// encrypted blob. It unwraps the layer key (attestation-agent provider
// through o.Resources, JWE with o.PrivateKeys), and decrypts AES-256-CTR
// while computing the HMAC. PlainDigest is the digest of the decrypted
// compressed layer, from the private options, for the caller to verify with
// image/layer. Verify must be called after the plaintext was consumed (it
// drains what is left) and before anything derived from it is committed.
func NewReader(ctx context.Context, encrypted io.Reader, desc ocispec.Descriptor, o Options) (*Reader, error) {
	k, err := UnwrapLayer(ctx, desc, o)
	if err != nil {
		return nil, err
	}
	stream := cipher.NewCTR(k.block, k.nonce[:])
	mac := hmac.New(sha256.New, k.key)
	k.Clear()
	if desc.Size > 0 {
		// One byte more than promised is enough to prove a size mismatch;
		// a registry streaming without end is not read further.
		encrypted = io.LimitReader(encrypted, desc.Size+1)
	}
	src := &hashio.Reader{R: encrypted, H: desc.Digest.Algorithm().Hash()}
	return &Reader{
		layer:       desc.Digest,
		blobSize:    desc.Size,
		src:         src,
		stream:      stream,
		mac:         mac,
		wantMAC:     k.wantMAC,
		plainDigest: k.plainDigest,
	}, nil
}

// Read returns decrypted bytes as they arrive; the HMAC verdict comes at
// end of stream, as an error wrapping ErrHMACMismatch instead of io.EOF.
// Bytes returned before that verdict are unauthenticated: consumers must
// not commit anything before Verify returned nil.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.eof {
		return 0, io.EOF
	}
	n, err := r.src.Read(p)
	if n > 0 {
		r.mac.Write(p[:n])
		r.stream.XORKeyStream(p[:n], p[:n])
	}
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		if !hmac.Equal(r.mac.Sum(nil), r.wantMAC) {
			r.err = fmt.Errorf("layer %s: %w", r.layer, ErrHMACMismatch)
			return n, r.err
		}
		r.eof = true
	default:
		r.err = fmt.Errorf("layer %s: read encrypted blob: %w", r.layer, err)
		err = r.err
	}
	return n, err
}

// PlainDigest is the digest of the decrypted compressed layer, as recorded
// in the wrapped private options (authenticated by the key wrap).
func (r *Reader) PlainDigest() digest.Digest { return r.plainDigest }

// Verify reads whatever is left of the stream (so that the HMAC, which
// ocicrypt only checks at end of stream, gets its verdict), then reports
// whether the blob was authenticated: the HMAC matched, and the ciphertext
// has the digest and size the manifest names. An HMAC mismatch wraps
// ErrHMACMismatch. Call it after the plaintext was fully consumed, and on
// the failure path of a decompressor or unpacker: a tampered blob usually
// breaks decompression before the HMAC verdict, and Verify then names the
// root cause. The result is remembered.
func (r *Reader) Verify() error {
	if r.verified {
		return r.verifyErr
	}
	r.verified = true
	if _, err := io.Copy(io.Discard, r); err != nil {
		r.verifyErr = err
		return err
	}
	if r.verifyErr = checkBlobDigest(r.layer, r.src.H); r.verifyErr == nil && r.blobSize > 0 && r.src.N != r.blobSize {
		r.verifyErr = errBlobSize(r.layer, r.src.N, r.blobSize)
	}
	return r.verifyErr
}

// ParsePublicOptions decodes the b64 org.opencontainers.image.enc.pubopts
// annotation and checks the cipher and the HMAC size.
func ParsePublicOptions(b64 string) (*blockcipher.PublicLayerBlockCipherOptions, error) {
	if b64 == "" {
		return nil, fmt.Errorf("no %s annotation (the HMAC is needed): %w", AnnotationPubOpts, errdefs.ErrInvalidArgument)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", AnnotationPubOpts, err)
	}
	var pub blockcipher.PublicLayerBlockCipherOptions
	if err := json.Unmarshal(raw, &pub); err != nil {
		return nil, fmt.Errorf("parse %s: %w", AnnotationPubOpts, err)
	}
	if string(pub.CipherType) != CipherAES256CTRHMACSHA256 {
		return nil, fmt.Errorf("%s: unsupported cipher %q: %w", AnnotationPubOpts, pub.CipherType, errdefs.ErrNotImplemented)
	}
	if len(pub.Hmac) != HMACSize {
		return nil, fmt.Errorf("%s: HMAC is %d bytes, want %d", AnnotationPubOpts, len(pub.Hmac), HMACSize)
	}
	if n, ok := pub.CipherOptions["nonce"]; ok && len(n) != NonceSize {
		return nil, fmt.Errorf("%s: nonce is %d bytes, want %d", AnnotationPubOpts, len(n), NonceSize)
	}
	return &pub, nil
}

// ParsePrivateOptions decodes an unwrapped PrivateLayerBlockCipherOptions
// (PLBCO) and checks the key, nonce and digest. Its error never quotes the
// input, which holds the layer key.
func ParsePrivateOptions(b []byte) (*blockcipher.PrivateLayerBlockCipherOptions, error) {
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal(b, &priv); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("parse unwrapped private layer options: invalid JSON at offset %d", se.Offset)
		}
		return nil, errors.New("parse unwrapped private layer options: not a PrivateLayerBlockCipherOptions object")
	}
	if len(priv.SymmetricKey) != LayerKeySize {
		clear(priv.SymmetricKey)
		return nil, fmt.Errorf("unwrapped private layer options: symkey is %d bytes, want %d", len(priv.SymmetricKey), LayerKeySize)
	}
	if n := priv.CipherOptions["nonce"]; len(n) != NonceSize {
		clear(priv.SymmetricKey)
		return nil, fmt.Errorf("unwrapped private layer options: nonce is %d bytes, want %d", len(n), NonceSize)
	}
	if err := priv.Digest.Validate(); err != nil {
		clear(priv.SymmetricKey)
		return nil, fmt.Errorf("unwrapped private layer options: digest: %w", err)
	}
	return &priv, nil
}

// UnwrapLayerKey returns the PrivateLayerBlockCipherOptions JSON of an
// encrypted layer, trying every wrapped key in turn: the attestation-agent
// provider (and any other org.opencontainers.image.enc.keys.provider.*
// annotation, as ocicrypt-rs does) through o.Resources, then JWE recipients
// with o.PrivateKeys. The error of each failed attempt is kept, so a
// missing KEK is named by its kid. The caller must clear the result.
func UnwrapLayerKey(ctx context.Context, desc ocispec.Descriptor, o Options) ([]byte, error) {
	var errs []error
	tried := false
	for _, name := range providerAnnotations(desc.Annotations) {
		tried = true
		for i, part := range strings.Split(desc.Annotations[name], ",") {
			plbco, err := unwrapPacket(ctx, part, o.Resources)
			if err == nil {
				return plbco, nil
			}
			errs = append(errs, fmt.Errorf("%s[%d]: %w", name, i, err))
		}
	}
	if v := desc.Annotations[AnnotationJWE]; v != "" {
		tried = true
		if len(o.PrivateKeys) == 0 {
			errs = append(errs, fmt.Errorf("%s: no private keys configured for JWE recipients", AnnotationJWE))
		} else {
			for i, part := range strings.Split(v, ",") {
				plbco, err := unwrapJWE(part, o.PrivateKeys)
				if err == nil {
					return plbco, nil
				}
				errs = append(errs, fmt.Errorf("%s[%d]: %w", AnnotationJWE, i, err))
			}
		}
	}
	if !tried {
		return nil, fmt.Errorf("unwrap layer key: no supported wrapped key annotation (%s*, %s): %w", AnnotationProviderPrefix, AnnotationJWE, errdefs.ErrNotImplemented)
	}
	return nil, fmt.Errorf("unwrap layer key: no wrapped key could be opened: %w", errors.Join(errs...))
}

// providerAnnotations lists the key-provider annotations present,
// attestation-agent first, the rest sorted.
func providerAnnotations(a map[string]string) []string {
	var names []string
	for k, v := range a {
		if v != "" && strings.HasPrefix(k, AnnotationProviderPrefix) && k != AnnotationAttestationAgent {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	if a[AnnotationAttestationAgent] != "" {
		names = append([]string{AnnotationAttestationAgent}, names...)
	}
	return names
}

func unwrapPacket(ctx context.Context, b64 string, resources ResourceGetter) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		return nil, fmt.Errorf("decode annotation packet: %w", err)
	}
	p, err := ParseAnnotationPacket(raw)
	if err != nil {
		return nil, err
	}
	return p.Unwrap(ctx, resources)
}

func unwrapJWE(b64 string, keys [][]byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		return nil, fmt.Errorf("decode JWE: %w", err)
	}
	dc := &config.DecryptConfig{Parameters: map[string][][]byte{
		"privkeys":           keys,
		"privkeys-passwords": make([][]byte, len(keys)),
	}}
	plbco, err := jwe.NewKeyWrapper().UnwrapKey(dc, raw)
	if err != nil {
		return nil, fmt.Errorf("JWE recipient: %w", err)
	}
	return plbco, nil
}
