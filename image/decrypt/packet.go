package decrypt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// Wrap types of an AnnotationPacket (COCO_SPEC 6.2).
const (
	WrapTypeA256GCM = "A256GCM" // 12-byte IV, wrapped_data = ciphertext||16-byte tag, no AAD
	WrapTypeA256CTR = "A256CTR" // 16-byte IV, no authentication
)

// AnnotationPacketVersion is the only packet version the kbs provider
// accepts; an absent version means this one.
const AnnotationPacketVersion = "0.1.0"

// ProviderKBS is the default (and only supported) packet provider: the KEK
// is the KBS resource named by the kid.
const ProviderKBS = "kbs"

// KEKSize is the size of the key-encryption key held by the KBS.
const KEKSize = 32

// maxPacketSize bounds an annotation packet before JSON decoding.
const maxPacketSize = 64 << 10

// AnnotationPacket is the attestation-agent key provider's wrapped layer
// key: the JSON that guest-components' coco_keyprovider writes and CDH reads
// (COCO_SPEC 6.2). The fields are in the order coco_keyprovider writes them;
// Marshal of a packet built by WrapKey reproduces its output byte for byte.
type AnnotationPacket struct {
	Version          string            `json:"version,omitempty"`
	Kid              string            `json:"kid"`
	WrappedData      []byte            `json:"wrapped_data"`
	Provider         string            `json:"provider,omitempty"`
	IV               []byte            `json:"iv,omitempty"`
	WrapType         string            `json:"wrap_type,omitempty"`
	ProviderSettings map[string]any    `json:"provider_settings,omitempty"`
	Annotations      map[string]string `json:"annotations,omitempty"`
}

// ParseAnnotationPacket decodes the packet JSON (not its base64 wrapping)
// and applies CDH's defaults (version 0.1.0, provider kbs). It checks the
// shape of the packet but not that the kid is a valid resource URI: Unwrap
// does that, so that odd upstream packets still parse.
func ParseAnnotationPacket(b []byte) (*AnnotationPacket, error) {
	if len(b) > maxPacketSize {
		return nil, fmt.Errorf("parse annotation packet: %d bytes is more than %d", len(b), maxPacketSize)
	}
	var p AnnotationPacket
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("parse annotation packet: %w", err)
	}
	if p.Version == "" {
		p.Version = AnnotationPacketVersion
	}
	if p.Provider == "" {
		p.Provider = ProviderKBS
	}
	if p.Kid == "" {
		return nil, errors.New("parse annotation packet: no kid")
	}
	if len(p.WrappedData) == 0 {
		return nil, fmt.Errorf("parse annotation packet (kid %s): no wrapped_data", p.Kid)
	}
	if p.Provider == ProviderKBS {
		if p.Version != AnnotationPacketVersion {
			return nil, fmt.Errorf("parse annotation packet (kid %s): version %q is not %s", p.Kid, p.Version, AnnotationPacketVersion)
		}
		if err := checkIV(p.WrapType, p.IV); err != nil {
			return nil, fmt.Errorf("parse annotation packet (kid %s): %w", p.Kid, err)
		}
	}
	return &p, nil
}

func checkIV(wrapType string, iv []byte) error {
	switch wrapType {
	case WrapTypeA256GCM:
		if len(iv) != 12 {
			return fmt.Errorf("A256GCM wants a 12-byte iv, got %d bytes", len(iv))
		}
	case WrapTypeA256CTR:
		if len(iv) != aes.BlockSize {
			return fmt.Errorf("A256CTR wants a 16-byte iv, got %d bytes", len(iv))
		}
	case "":
		return errors.New("no wrap_type")
	default:
		return fmt.Errorf("unsupported wrap_type %q", wrapType)
	}
	return nil
}

// ErrWrongKey reports that a KEK did not open a wrapped layer key.
var ErrWrongKey = errors.New("wrong key-encryption key or corrupted wrapped_data")

// Unwrap fetches the KEK named by the packet's kid from resources and
// returns the PrivateLayerBlockCipherOptions JSON. A KEK the KBS does not
// have fails with an error naming the kid (and errdefs.ErrNotFound when the
// KBS said 404).
func (p *AnnotationPacket) Unwrap(ctx context.Context, resources ResourceGetter) ([]byte, error) {
	if p.Provider != ProviderKBS {
		return nil, fmt.Errorf("unwrap layer key (kid %s): provider %q is not supported (only %q): %w", p.Kid, p.Provider, ProviderKBS, errdefs.ErrNotImplemented)
	}
	if _, err := kbs.ParseResourceURI(p.Kid); err != nil {
		return nil, fmt.Errorf("unwrap layer key: kid %s: %w", p.Kid, err)
	}
	if resources == nil {
		return nil, fmt.Errorf("unwrap layer key: no KBS configured to fetch KEK %s", p.Kid)
	}
	kek, err := resources.GetResource(ctx, p.Kid)
	if err != nil {
		return nil, fmt.Errorf("unwrap layer key: get KEK %s: %w", p.Kid, err)
	}
	defer clear(kek)
	return p.UnwrapWithKEK(kek)
}

// UnwrapWithKEK decrypts wrapped_data with kek and returns the
// PrivateLayerBlockCipherOptions JSON.
func (p *AnnotationPacket) UnwrapWithKEK(kek []byte) ([]byte, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("unwrap layer key: KEK %s is %d bytes, want %d", p.Kid, len(kek), KEKSize)
	}
	if err := checkIV(p.WrapType, p.IV); err != nil {
		return nil, fmt.Errorf("unwrap layer key (kid %s): %w", p.Kid, err)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("unwrap layer key (kid %s): %w", p.Kid, err)
	}
	switch p.WrapType {
	case WrapTypeA256GCM:
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("unwrap layer key (kid %s): %w", p.Kid, err)
		}
		plain, err := gcm.Open(nil, p.IV, p.WrappedData, nil)
		if err != nil {
			return nil, fmt.Errorf("unwrap layer key with KEK %s: %w (A256GCM authentication failed)", p.Kid, ErrWrongKey)
		}
		return plain, nil
	default: // A256CTR, checked by checkIV
		plain := make([]byte, len(p.WrappedData))
		cipher.NewCTR(block, p.IV).XORKeyStream(plain, p.WrappedData)
		// CTR has no tag: a wrong KEK shows up as garbage, which the
		// PLBCO parser rejects.
		if !json.Valid(plain) {
			clear(plain)
			return nil, fmt.Errorf("unwrap layer key with KEK %s: %w (A256CTR result is not JSON)", p.Kid, ErrWrongKey)
		}
		return plain, nil
	}
}

// WrapKey wraps plbco (PrivateLayerBlockCipherOptions JSON) with kek under
// A256GCM and a random 12-byte IV, and returns the packet JSON exactly as
// coco_keyprovider writes it: {"kid","wrapped_data","iv","wrap_type"}. The
// kid must be a resource URI the consumer can fetch (kbs:///repo/type/tag).
func WrapKey(kek []byte, kid string, plbco []byte) ([]byte, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("wrap layer key: KEK is %d bytes, want %d", len(kek), KEKSize)
	}
	if _, err := kbs.ParseResourceURI(kid); err != nil {
		return nil, fmt.Errorf("wrap layer key: kid: %w", err)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("wrap layer key: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("wrap layer key: %w", err)
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("wrap layer key: iv: %w", err)
	}
	p := AnnotationPacket{
		Kid:         kid,
		WrappedData: gcm.Seal(nil, iv, plbco, nil),
		IV:          iv,
		WrapType:    WrapTypeA256GCM,
	}
	b, err := json.Marshal(&p)
	if err != nil {
		return nil, fmt.Errorf("wrap layer key: %w", err)
	}
	return b, nil
}
