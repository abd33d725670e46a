package decrypt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Random access (lazy pulls) rests on ocicrypt's layer layout, confirmed in
// github.com/containers/ocicrypt@v1.3.2 blockcipher/blockcipher_aes_ctr.go
// (aesctrcryptor.Read, AESCTRLayerBlockCipher.init/Encrypt):
//
//   - the ciphertext is exactly as long as the plaintext: every byte read is
//     XORed with cipher.NewCTR(aes.NewCipher(symkey), nonce) and returned;
//     there is no header, trailer, padding or per-block tag;
//   - the nonce is the whole 16-byte initial counter block (no split into
//     nonce and counter fields), taken from the options with GetOpt, which
//     prefers the public options over the private ones; Encrypt puts it
//     only in the private (wrapped) options;
//   - the HMAC is HMAC-SHA256 keyed with the same 32-byte symkey over the
//     whole ciphertext (written after XOR when encrypting, before XOR when
//     decrypting), stored in the pubopts annotation, and only checked at
//     end of stream.
//
// So byte o of the blob is plaintext byte o XORed with keystream byte o%16
// of block AES(nonce + floor(o/16)), the addition being Go's cipher.NewCTR
// increment: 128-bit big-endian with carry, wrapping at 2^128.

// LayerKey is the unwrapped private options of one encrypted layer (the
// layer key, the initial counter block, the expected HMAC and the plain
// digest), obtained once, without reading the blob, for random-access
// decryption (NewReaderAt) and the whole-blob check (NewHMACVerifier). The
// key itself never leaves the package. A LayerKey is safe for concurrent
// use until Clear.
type LayerKey struct {
	layer       digest.Digest // encrypted blob digest, for messages
	size        int64         // descriptor size; 0 when the descriptor has none
	key         []byte        // AES-256 and HMAC-SHA256 key (symkey)
	block       cipher.Block  // AES-256 keyed with key
	nonce       [NonceSize]byte
	wantMAC     []byte // HMAC-SHA256 over the ciphertext, from pubopts
	plainDigest digest.Digest
}

// UnwrapLayer unwraps the layer key of an encrypted layer descriptor as a
// full pull does (the attestation-agent provider through o.Resources, then
// JWE recipients with o.PrivateKeys; see UnwrapLayerKey), with the same
// checks: the media type ends in +encrypted, the digest is valid, the
// pubopts cipher is AES_256_CTR_HMAC_SHA256 with a 32-byte HMAC, the key
// is 32 bytes and the nonce 16, the plain digest is valid; anything else is
// refused. It reads no blob. The caller calls Clear when the layer is no
// longer served.
func UnwrapLayer(ctx context.Context, desc ocispec.Descriptor, o Options) (*LayerKey, error) {
	if !IsEncrypted(desc.MediaType) {
		return nil, fmt.Errorf("layer %s (%s): %w", desc.Digest, desc.MediaType, ErrNotEncrypted)
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("layer %s: blob digest: %w: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("layer %s: negative size %d: %w", desc.Digest, desc.Size, errdefs.ErrInvalidArgument)
	}
	pub, err := ParsePublicOptions(desc.Annotations[AnnotationPubOpts])
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	plbco, err := UnwrapLayerKey(ctx, desc, o)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer clear(plbco)
	priv, err := ParsePrivateOptions(plbco)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	nonce := priv.CipherOptions["nonce"]
	if n, ok := pub.CipherOptions["nonce"]; ok {
		nonce = n // ocicrypt's GetOpt prefers the public options
	}
	block, err := aes.NewCipher(priv.SymmetricKey)
	if err != nil {
		clear(priv.SymmetricKey)
		return nil, fmt.Errorf("layer %s: set up AES-256-CTR: %w", desc.Digest, err)
	}
	k := &LayerKey{
		layer:       desc.Digest,
		size:        desc.Size,
		key:         priv.SymmetricKey,
		block:       block,
		wantMAC:     pub.Hmac,
		plainDigest: priv.Digest,
	}
	copy(k.nonce[:], nonce) // ParsePublicOptions and ParsePrivateOptions checked its size
	log.G(ctx).WithField("layer", desc.Digest).WithField("plain", priv.Digest).Debug("layer key unwrapped")
	return k, nil
}

// Layer is the digest of the encrypted blob.
func (k *LayerKey) Layer() digest.Digest { return k.layer }

// Size is the encrypted blob size from the descriptor (0 if it had none).
// The plaintext has the same size.
func (k *LayerKey) Size() int64 { return k.size }

// Cipher is the layer cipher, always CipherAES256CTRHMACSHA256.
func (k *LayerKey) Cipher() string { return CipherAES256CTRHMACSHA256 }

// Nonce returns a copy of the 16-byte initial counter block.
func (k *LayerKey) Nonce() []byte { return append([]byte(nil), k.nonce[:]...) }

// ExpectedHMAC returns a copy of the HMAC-SHA256 the ciphertext must have.
func (k *LayerKey) ExpectedHMAC() []byte { return append([]byte(nil), k.wantMAC...) }

// PlainDigest is the digest of the decrypted compressed layer, as recorded
// in the wrapped private options (authenticated by the key wrap).
func (k *LayerKey) PlainDigest() digest.Digest { return k.plainDigest }

// Clear zeroes the layer key. ReaderAts made before keep the expanded AES
// key schedule they hold; NewReaderAt and NewHMACVerifier fail afterwards.
func (k *LayerKey) Clear() {
	clear(k.key)
	k.key = nil
	k.block = nil
}
