package sealed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the only payload version upstream accepts.
const Version = "0.1.0"

// Payload types.
const (
	TypeVault    = "vault"
	TypeEnvelope = "envelope"
)

// Wrap types of envelope data (upstream crypto::WrapType names).
const (
	WrapA256GCM = "A256GCM"
	WrapA256CTR = "A256CTR"
)

// Secret is a sealed-secret payload: exactly one of Vault and Envelope is
// set. Its JSON is a tagged union on "type" with every field required, as
// upstream's serde definition.
type Secret struct {
	Version  string
	Vault    *Vault
	Envelope *Envelope
}

// Type returns "vault" or "envelope" (empty when neither is set).
func (s *Secret) Type() string {
	switch {
	case s.Vault != nil:
		return TypeVault
	case s.Envelope != nil:
		return TypeEnvelope
	}
	return ""
}

// Vault points at a secret stored elsewhere: with provider "kbs", Name is a
// kbs:/// resource URI whose bytes are the plaintext.
type Vault struct {
	Name             string
	Provider         string
	ProviderSettings map[string]any
	Annotations      map[string]any
}

// Envelope carries data encrypted with a data key (DEK) that Provider
// unwraps. EncryptedKey, EncryptedData and IV are standard base64, as
// upstream.
type Envelope struct {
	KeyID            string
	EncryptedKey     string
	EncryptedData    string
	WrapType         string
	IV               string
	Provider         string
	ProviderSettings map[string]any
	Annotations      map[string]any
}

// Wire shapes, in upstream's field order (version, type, then the variant's
// fields as declared).
type vaultJSON struct {
	Version          string         `json:"version"`
	Type             string         `json:"type"`
	Name             string         `json:"name"`
	Provider         string         `json:"provider"`
	ProviderSettings map[string]any `json:"provider_settings"`
	Annotations      map[string]any `json:"annotations"`
}

type envelopeJSON struct {
	Version          string         `json:"version"`
	Type             string         `json:"type"`
	KeyID            string         `json:"key_id"`
	EncryptedKey     string         `json:"encrypted_key"`
	EncryptedData    string         `json:"encrypted_data"`
	WrapType         string         `json:"wrap_type"`
	IV               string         `json:"iv"`
	Provider         string         `json:"provider"`
	ProviderSettings map[string]any `json:"provider_settings"`
	Annotations      map[string]any `json:"annotations"`
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// MarshalJSON writes the upstream layout; nil maps become {} because
// upstream requires the fields.
func (s *Secret) MarshalJSON() ([]byte, error) {
	switch {
	case s.Vault != nil && s.Envelope == nil:
		v := s.Vault
		return marshal(vaultJSON{s.Version, TypeVault, v.Name, v.Provider, orEmpty(v.ProviderSettings), orEmpty(v.Annotations)})
	case s.Envelope != nil && s.Vault == nil:
		e := s.Envelope
		return marshal(envelopeJSON{s.Version, TypeEnvelope, e.KeyID, e.EncryptedKey, e.EncryptedData, e.WrapType, e.IV, e.Provider, orEmpty(e.ProviderSettings), orEmpty(e.Annotations)})
	}
	return nil, errors.New("secret must have exactly one of vault and envelope")
}

// marshal encodes without HTML escaping, as serde_json does, so a name or
// kid with "&" (a resource URI query) keeps upstream's bytes.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// fields decodes the required fields of one variant; every field must be
// present and of its JSON type (null is refused, as serde refuses it).
type fields map[string]json.RawMessage

func (f fields) str(name string, dst *string) error {
	raw, ok := f[name]
	if !ok {
		return fmt.Errorf("missing field %q", name)
	}
	if err := json.Unmarshal(raw, dst); err != nil || bytes.Equal(raw, []byte("null")) {
		return fmt.Errorf("field %q: want a string", name)
	}
	return nil
}

func (f fields) object(name string, dst *map[string]any) error {
	raw, ok := f[name]
	if !ok {
		return fmt.Errorf("missing field %q", name)
	}
	if err := json.Unmarshal(raw, dst); err != nil || *dst == nil {
		return fmt.Errorf("field %q: want an object", name)
	}
	return nil
}

// UnmarshalJSON reads the upstream layout. Unknown fields are ignored, as
// serde does; missing or mistyped required fields are errors.
func (s *Secret) UnmarshalJSON(b []byte) error {
	var f fields
	if err := json.Unmarshal(b, &f); err != nil || f == nil {
		return errors.New("payload is not a JSON object")
	}
	var typ string
	if err := f.str("version", &s.Version); err != nil {
		return err
	}
	if err := f.str("type", &typ); err != nil {
		return err
	}
	s.Vault, s.Envelope = nil, nil
	switch typ {
	case TypeVault:
		v := &Vault{}
		for _, err := range []error{
			f.str("name", &v.Name),
			f.str("provider", &v.Provider),
			f.object("provider_settings", &v.ProviderSettings),
			f.object("annotations", &v.Annotations),
		} {
			if err != nil {
				return fmt.Errorf("vault: %w", err)
			}
		}
		s.Vault = v
	case TypeEnvelope:
		e := &Envelope{}
		for _, err := range []error{
			f.str("key_id", &e.KeyID),
			f.str("encrypted_key", &e.EncryptedKey),
			f.str("encrypted_data", &e.EncryptedData),
			f.str("wrap_type", &e.WrapType),
			f.str("iv", &e.IV),
			f.str("provider", &e.Provider),
			f.object("provider_settings", &e.ProviderSettings),
			f.object("annotations", &e.Annotations),
		} {
			if err != nil {
				return fmt.Errorf("envelope: %w", err)
			}
		}
		if e.WrapType != WrapA256GCM && e.WrapType != WrapA256CTR {
			return fmt.Errorf("envelope: wrap_type %q is neither %s nor %s", e.WrapType, WrapA256GCM, WrapA256CTR)
		}
		s.Envelope = e
	default:
		return fmt.Errorf("type %q is neither vault nor envelope", typ)
	}
	return nil
}

// ParsePayload decodes payload JSON and checks its version. Errors are
// *Error with Part PartPayload.
func ParsePayload(b []byte) (*Secret, error) {
	var s Secret
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, &Error{Part: PartPayload, Err: err}
	}
	if s.Version != Version {
		return nil, partErr(PartPayload, "version %q is not %s", s.Version, Version)
	}
	return &s, nil
}
