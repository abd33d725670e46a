package kbs

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	jose "github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// Response is the flattened JSON JWE a KBS returns for a resource. AAD is a
// raw (not base64) string and Trustee never sets it. Members are in
// kbs-types order.
type Response struct {
	Protected    string `json:"protected"`
	EncryptedKey string `json:"encrypted_key"`
	AAD          string `json:"aad,omitempty"`
	IV           string `json:"iv"`
	Ciphertext   string `json:"ciphertext"`
	Tag          string `json:"tag"`
}

const (
	cekSize   = 32
	gcmIVSize = 12
)

// EncryptResponse encrypts plaintext to a tee-pubkey as Trustee does:
// A256GCM content encryption, the CEK wrapped with ECDH-ES+A256KW (fresh
// ephemeral key on the client's curve) or RSA-OAEP-256.
//
// The protected header is written by hand, not by go-jose, because its
// bytes are an interop requirement: the Rust client (guest-components
// kbs_protocol via kbs-types) decodes it into ProtectedHeader and uses
// ProtectedHeader::generate_aad, which re-serialises it as compact JSON with
// alg, enc, then the other members through a serde_json Map (keys sorted at
// every level, so epk is crv, kty, x, y), instead of the bytes received.
// go-jose writes epk in JWK member order (kty, crv, x, y), which that client
// fails to decrypt. TestEncryptDecryptRoundTrip rebuilds the AAD the Rust
// way; TestKbsTypesResponseVector checks that rebuild against kbs-types'
// own vector; TestGoJoseHeaderBreaksRustAAD shows go-jose's header differs.
func EncryptResponse(pub TEEPubKey, plaintext []byte) ([]byte, error) {
	key, err := pub.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: tee-pubkey: %w", err)
	}
	cek := make([]byte, cekSize)
	if _, err := rand.Read(cek); err != nil {
		return nil, fmt.Errorf("encrypt resource: generate CEK: %w", err)
	}
	defer clear(cek)

	var header, encryptedKey []byte
	switch k := key.(type) {
	case *ecdh.PublicKey:
		header, encryptedKey, err = wrapECDHES(k, pub.Crv, cek)
	case *rsa.PublicKey:
		header = []byte(`{"alg":"` + jweAlgRSAOAEP256 + `","enc":"` + jweEncA256GCM + `"}`)
		encryptedKey, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, k, cek, nil)
	default:
		err = fmt.Errorf("unsupported key type %T", key)
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: wrap CEK: %w", err)
	}

	protected := base64.RawURLEncoding.EncodeToString(header)
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: %w", err)
	}
	iv := make([]byte, gcmIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("encrypt resource: generate IV: %w", err)
	}
	sealed := gcm.Seal(nil, iv, plaintext, []byte(protected))
	ct, tag := sealed[:len(plaintext)], sealed[len(plaintext):]
	out, err := json.Marshal(Response{
		Protected:    protected,
		EncryptedKey: base64.RawURLEncoding.EncodeToString(encryptedKey),
		IV:           base64.RawURLEncoding.EncodeToString(iv),
		Ciphertext:   base64.RawURLEncoding.EncodeToString(ct),
		Tag:          base64.RawURLEncoding.EncodeToString(tag),
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt resource: encode JWE: %w", err)
	}
	return out, nil
}

// wrapECDHES derives the KEK with Concat KDF over the ECDH shared secret
// (apu and apv empty, as Trustee) and AES-key-wraps the CEK with it.
func wrapECDHES(recipient *ecdh.PublicKey, crv string, cek []byte) (header, wrapped []byte, err error) {
	eph, err := recipient.Curve().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ephemeral key: %w", err)
	}
	z, err := eph.ECDH(recipient)
	if err != nil {
		return nil, nil, fmt.Errorf("ECDH: %w", err)
	}
	defer clear(z)
	kek, err := concatKDF(z, jweAlgECDHESA256KW, 32)
	if err != nil {
		return nil, nil, err
	}
	defer clear(kek)
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, nil, err
	}
	wrapped, err = josecipher.KeyWrap(block, cek)
	if err != nil {
		return nil, nil, fmt.Errorf("AES key wrap: %w", err)
	}
	point := eph.PublicKey().Bytes() // 0x04 || X || Y
	size := (len(point) - 1) / 2
	var h bytes.Buffer
	h.WriteString(`{"alg":"` + jweAlgECDHESA256KW + `","enc":"` + jweEncA256GCM + `","epk":{"crv":"`)
	h.WriteString(crv)
	h.WriteString(`","kty":"EC","x":"`)
	h.WriteString(base64.RawURLEncoding.EncodeToString(point[1 : 1+size]))
	h.WriteString(`","y":"`)
	h.WriteString(base64.RawURLEncoding.EncodeToString(point[1+size:]))
	h.WriteString(`"}}`)
	return h.Bytes(), wrapped, nil
}

// concatKDF is NIST SP 800-56A Concat KDF with SHA-256 and the JWA
// OtherInfo for alg: len-prefixed alg id, empty apu and apv, key bits.
func concatKDF(z []byte, alg string, size int) ([]byte, error) {
	algID := make([]byte, 4+len(alg))
	binary.BigEndian.PutUint32(algID, uint32(len(alg)))
	copy(algID[4:], alg)
	empty := make([]byte, 4)
	supPub := make([]byte, 4)
	binary.BigEndian.PutUint32(supPub, uint32(size*8))
	out := make([]byte, size)
	r := josecipher.NewConcatKDF(crypto.SHA256, z, algID, empty, empty, supPub, nil)
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("concat KDF: %w", err)
	}
	return out, nil
}

// ParseResponse decodes a flattened JWE resource response.
func ParseResponse(b []byte) (*Response, error) {
	var r Response
	if err := unmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("decode JWE response: %w", err)
	}
	if r.Protected == "" || r.Ciphertext == "" && r.Tag == "" {
		return nil, errors.New("decode JWE response: missing protected header or ciphertext")
	}
	return &r, nil
}

// allowed JWE algorithms; RSA1_5 is deliberately absent.
var (
	jweKeyAlgorithms     = []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}
	jweContentAlgorithms = []jose.ContentEncryption{jose.A256GCM}
)

// DecryptResponse opens a KBS resource response. The AAD is the protected
// header exactly as received (RFC 7516), so Trustee's output decrypts
// whatever its member order.
func (k *TEEKey) DecryptResponse(body []byte) ([]byte, error) {
	if _, err := ParseResponse(body); err != nil {
		return nil, err
	}
	obj, err := jose.ParseEncryptedJSON(string(body), jweKeyAlgorithms, jweContentAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("parse JWE response: %w", err)
	}
	wantAlg := jweAlgECDHESA256KW
	if k.rsa != nil {
		wantAlg = jweAlgRSAOAEP256
	}
	if got := obj.Header.Algorithm; got != wantAlg {
		return nil, fmt.Errorf("JWE alg %q does not match the TEE key (%s)", got, wantAlg)
	}
	pt, err := obj.Decrypt(k.decryptionKey())
	if err != nil {
		return nil, fmt.Errorf("decrypt JWE response: %w", err)
	}
	return pt, nil
}
