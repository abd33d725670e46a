package sealed

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Envelope provider names cocoon implements. Upstream has neither (its
// envelope providers are cloud KMSs), so envelopes naming them parse in an
// upstream CDH but unseal only in cocoon.
const (
	ProviderKBS   = "kbs"
	ProviderLocal = "local"
)

// EnvelopeProvider unwraps an envelope's data key (DEK). It is upstream's
// KMS "Decrypter" seam.
type EnvelopeProvider interface {
	UnwrapKey(ctx context.Context, encryptedKey []byte, keyID string, annotations map[string]any) ([]byte, error)
}

// KeySize is the size of data keys and key-encryption keys (AES-256).
const KeySize = 32

const (
	gcmNonceSize = 12
	ctrIVSize    = aes.BlockSize
	// kekAADPrefix binds a wrapped data key to the key_id it was wrapped
	// under, so an encrypted_key cannot be replayed under another key_id.
	kekAADPrefix = "cocoon sealed-secret kek:"
)

// ParseKEK reads a key-encryption key file: exactly 32 raw bytes, or the
// standard base64 of 32 bytes (surrounding whitespace ignored).
func ParseKEK(b []byte) ([]byte, error) {
	if len(b) == KeySize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	k := make([]byte, base64.StdEncoding.DecodedLen(len(t)))
	n, err := base64.StdEncoding.Decode(k, t)
	if err != nil || n != KeySize {
		clear(k)
		return nil, fmt.Errorf("key-encryption key must be %d raw bytes or their base64", KeySize)
	}
	return k[:n], nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("AES-256 key is %d bytes, want %d", len(key), KeySize)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// WrapKey wraps a data key under a key-encryption key for the kbs and local
// providers: nonce(12) || AES-256-GCM(kek, dek, AAD = kekAADPrefix+keyID).
func WrapKey(kek, dek []byte, keyID string) ([]byte, error) {
	aead, err := newGCM(kek)
	if err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	nonce := make([]byte, gcmNonceSize, gcmNonceSize+len(dek)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	return aead.Seal(nonce, nonce, dek, []byte(kekAADPrefix+keyID)), nil
}

// UnwrapKey reverses WrapKey.
func UnwrapKey(kek, wrapped []byte, keyID string) ([]byte, error) {
	aead, err := newGCM(kek)
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	if len(wrapped) != gcmNonceSize+KeySize+aead.Overhead() {
		return nil, fmt.Errorf("unwrap data key: wrapped key is %d bytes, want %d", len(wrapped), gcmNonceSize+KeySize+aead.Overhead())
	}
	dek, err := aead.Open(nil, wrapped[:gcmNonceSize], wrapped[gcmNonceSize:], []byte(kekAADPrefix+keyID))
	if err != nil {
		return nil, errors.New("unwrap data key: authentication failed (wrong key-encryption key or key_id)")
	}
	return dek, nil
}

// SealEnvelope encrypts plaintext under a fresh data key (A256GCM, random
// 12-byte IV, no AAD, as upstream) and wraps the data key under kek for
// provider ("kbs": keyID is the kbs:/// URI of the KEK; "local": keyID is
// the KEK's file name in the local provider's directory).
func SealEnvelope(plaintext, kek []byte, provider, keyID string) (*Envelope, error) {
	if provider == "" || keyID == "" {
		return nil, errors.New("seal envelope: provider and key_id are required")
	}
	dek := make([]byte, KeySize)
	defer clear(dek)
	if _, err := rand.Read(dek); err != nil {
		return nil, fmt.Errorf("seal envelope: %w", err)
	}
	aead, err := newGCM(dek)
	if err != nil {
		return nil, fmt.Errorf("seal envelope: %w", err)
	}
	iv := make([]byte, gcmNonceSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("seal envelope: %w", err)
	}
	wrapped, err := WrapKey(kek, dek, keyID)
	if err != nil {
		return nil, fmt.Errorf("seal envelope: %w", err)
	}
	return &Envelope{
		KeyID:         keyID,
		EncryptedKey:  base64.StdEncoding.EncodeToString(wrapped),
		EncryptedData: base64.StdEncoding.EncodeToString(aead.Seal(nil, iv, plaintext, nil)),
		WrapType:      WrapA256GCM,
		IV:            base64.StdEncoding.EncodeToString(iv),
		Provider:      provider,
	}, nil
}

// openEnvelope decrypts the envelope's data with an unwrapped data key.
func openEnvelope(dek []byte, e *Envelope) ([]byte, error) {
	iv, err := base64.StdEncoding.DecodeString(e.IV)
	if err != nil {
		return nil, fmt.Errorf("decode iv: %w", err)
	}
	data, err := base64.StdEncoding.DecodeString(e.EncryptedData)
	if err != nil {
		return nil, fmt.Errorf("decode encrypted_data: %w", err)
	}
	switch e.WrapType {
	case WrapA256GCM:
		aead, err := newGCM(dek)
		if err != nil {
			return nil, fmt.Errorf("data key: %w", err)
		}
		if len(iv) != aead.NonceSize() {
			return nil, fmt.Errorf("A256GCM iv is %d bytes, want %d", len(iv), aead.NonceSize())
		}
		pt, err := aead.Open(nil, iv, data, nil)
		if err != nil {
			return nil, errors.New("decrypt encrypted_data: authentication failed")
		}
		return pt, nil
	case WrapA256CTR:
		if len(dek) != KeySize {
			return nil, fmt.Errorf("data key is %d bytes, want %d", len(dek), KeySize)
		}
		if len(iv) != ctrIVSize {
			return nil, fmt.Errorf("A256CTR iv is %d bytes, want %d", len(iv), ctrIVSize)
		}
		blk, err := aes.NewCipher(dek)
		if err != nil {
			return nil, fmt.Errorf("data key: %w", err)
		}
		pt := make([]byte, len(data))
		cipher.NewCTR(blk, iv).XORKeyStream(pt, data)
		return pt, nil
	}
	return nil, fmt.Errorf("wrap_type %q is not supported", e.WrapType)
}

// KBSProvider unwraps data keys with a key-encryption key that is itself a
// KBS resource (key_id = its kbs:/// URI), fetched after attestation and
// used only inside the TEE.
type KBSProvider struct {
	Resources kbs.ResourceGetter
}

// UnwrapKey implements EnvelopeProvider.
func (p *KBSProvider) UnwrapKey(ctx context.Context, encryptedKey []byte, keyID string, _ map[string]any) ([]byte, error) {
	if p == nil || p.Resources == nil {
		return nil, errors.New("kbs provider: no KBS configured")
	}
	if _, err := kbs.ParseResourceURI(keyID); err != nil {
		return nil, fmt.Errorf("kbs provider: key_id: %w", err)
	}
	raw, err := p.Resources.GetResource(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("kbs provider: fetch key-encryption key %s: %w", keyID, err)
	}
	defer clear(raw)
	kek, err := ParseKEK(raw)
	if err != nil {
		return nil, fmt.Errorf("kbs provider: resource %s: %w", keyID, err)
	}
	defer clear(kek)
	dek, err := UnwrapKey(kek, encryptedKey, keyID)
	if err != nil {
		return nil, fmt.Errorf("kbs provider: %w", err)
	}
	return dek, nil
}

// LocalProvider unwraps data keys with key-encryption key files in Dir
// (key_id = a file name in Dir), for tests and air-gapped use. Dir should
// be on tmpfs inside the TEE.
type LocalProvider struct {
	Dir string
}

// UnwrapKey implements EnvelopeProvider.
func (p *LocalProvider) UnwrapKey(_ context.Context, encryptedKey []byte, keyID string, _ map[string]any) ([]byte, error) {
	if p == nil || p.Dir == "" {
		return nil, errors.New("local provider: no key directory configured")
	}
	if keyID == "" || strings.ContainsAny(keyID, `/\`) || keyID == "." || keyID == ".." {
		return nil, fmt.Errorf("local provider: key_id %q is not a file name", keyID)
	}
	root, err := os.OpenRoot(p.Dir)
	if err != nil {
		return nil, fmt.Errorf("local provider: %w", err)
	}
	defer root.Close()
	raw, err := root.ReadFile(keyID)
	if err != nil {
		return nil, fmt.Errorf("local provider: read key %q: %w", keyID, err)
	}
	defer clear(raw)
	kek, err := ParseKEK(raw)
	if err != nil {
		return nil, fmt.Errorf("local provider: key %q: %w", keyID, err)
	}
	defer clear(kek)
	dek, err := UnwrapKey(kek, encryptedKey, keyID)
	if err != nil {
		return nil, fmt.Errorf("local provider: %w", err)
	}
	return dek, nil
}
