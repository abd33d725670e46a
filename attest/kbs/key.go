package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"

	jose "github.com/go-jose/go-jose/v4"
)

// TEE key algorithms, spelled as aa.toml's tee_key_algorithm.
const (
	KeyAlgorithmP256      = "ECDH-ES+A256KW-P256"
	KeyAlgorithmP521      = "ECDH-ES+A256KW-P521"
	KeyAlgorithmRSAOAEP   = "RSA-OAEP-256"
	DefaultKeyAlgorithm   = KeyAlgorithmP256
	rsaKeyBits            = 2048
	minRSAKeyBits         = 2048
	maxRSAKeyBits         = 8192
	jweAlgECDHESA256KW    = "ECDH-ES+A256KW"
	jweAlgRSAOAEP256      = "RSA-OAEP-256"
	jweEncA256GCM         = "A256GCM"
	curveP256             = "P-256"
	curveP521             = "P-521"
	ktyEC                 = "EC"
	ktyRSA                = "RSA"
	maxRSAModulusEncoded  = maxRSAKeyBits / 8
	maxRSAExponentEncoded = 8
)

// TEEPubKey is the tee-pubkey JWK of kbs-types. Members are declared in
// the order kbs-types serialises them (kty first, then the variant's
// fields), which is also the order go-jose writes them in; coordinates are
// fixed length, unpadded base64url.
type TEEPubKey struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	Alg string `json:"alg"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
}

// Validate checks that the JWK is one of the variants cocoon supports and
// that its key material decodes to a valid public key.
func (k TEEPubKey) Validate() error {
	_, err := k.PublicKey()
	return err
}

// PublicKey returns the key as *ecdh.PublicKey (EC) or *rsa.PublicKey.
// The kbs-types variant (kty, alg, crv and which members are present) is
// checked here; EC key material is decoded by go-jose (fixed-length
// coordinates, point on the curve).
func (k TEEPubKey) PublicKey() (any, error) {
	switch k.Kty {
	case ktyEC:
		if k.Alg != jweAlgECDHESA256KW {
			return nil, fmt.Errorf("EC key with alg %q, want %s", k.Alg, jweAlgECDHESA256KW)
		}
		if k.N != "" || k.E != "" {
			return nil, errors.New("EC key carries RSA members")
		}
		if k.Crv != curveP256 && k.Crv != curveP521 {
			return nil, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		b, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("%s key: %w", k.Crv, err)
		}
		pub, ok := jwk.Key.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s key decodes to %T", k.Crv, jwk.Key)
		}
		return pub.ECDH()
	case ktyRSA:
		if k.Alg != jweAlgRSAOAEP256 {
			return nil, fmt.Errorf("RSA key with alg %q, want %s", k.Alg, jweAlgRSAOAEP256)
		}
		if k.Crv != "" || k.X != "" || k.Y != "" {
			return nil, errors.New("RSA key carries EC members")
		}
		return k.rsaPublicKey()
	case "":
		return nil, errors.New("missing kty")
	default:
		return nil, fmt.Errorf("unsupported kty %q", k.Kty)
	}
}

// rsaPublicKey decodes n and e itself rather than through go-jose: go-jose
// refuses moduli above its package-wide MaxRSAModulusBits (4096), while
// kbs-types clients may send keys up to 8192 bits (Trustee's rsa crate
// accepts them), and raising that global would loosen every other go-jose
// user in the process.
func (k TEEPubKey) rsaPublicKey() (*rsa.PublicKey, error) {
	n, err := base64.RawURLEncoding.DecodeString(k.N)
	if err != nil || len(n) == 0 || len(n) > maxRSAModulusEncoded {
		return nil, fmt.Errorf("bad modulus n (%d bytes): %v", len(n), err)
	}
	e, err := base64.RawURLEncoding.DecodeString(k.E)
	if err != nil || len(e) == 0 || len(e) > maxRSAExponentEncoded {
		return nil, fmt.Errorf("bad exponent e: %v", err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if bits := pub.N.BitLen(); bits < minRSAKeyBits {
		return nil, fmt.Errorf("RSA modulus of %d bits is below %d", bits, minRSAKeyBits)
	}
	if pub.E < 3 || pub.E%2 == 0 {
		return nil, fmt.Errorf("bad RSA exponent %d", pub.E)
	}
	return pub, nil
}

// TEEKey is the ephemeral key pair whose public half travels in
// runtime-data and to which the KBS encrypts resources.
type TEEKey struct {
	algorithm string
	ec        *ecdsa.PrivateKey
	rsa       *rsa.PrivateKey
}

// GenerateTEEKey creates a key for algorithm ("" means the default P-256).
func GenerateTEEKey(algorithm string) (*TEEKey, error) {
	if algorithm == "" {
		algorithm = DefaultKeyAlgorithm
	}
	k := &TEEKey{algorithm: algorithm}
	var err error
	switch algorithm {
	case KeyAlgorithmP256:
		k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyAlgorithmP521:
		k.ec, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case KeyAlgorithmRSAOAEP:
		k.rsa, err = rsa.GenerateKey(rand.Reader, rsaKeyBits)
	default:
		return nil, fmt.Errorf("unsupported TEE key algorithm %q (want %s, %s or %s)",
			algorithm, KeyAlgorithmP256, KeyAlgorithmP521, KeyAlgorithmRSAOAEP)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s TEE key: %w", algorithm, err)
	}
	return k, nil
}

// ParseTEEKeyPEM reads a TEE private key in the PEM forms guest-components
// writes: PKCS#1 for RSA, PKCS#8 for EC.
func ParseTEEKeyPEM(b []byte) (*TEEKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("parse TEE key: no PEM block")
	}
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse TEE key: PKCS#1: %w", err)
		}
		return &TEEKey{algorithm: KeyAlgorithmRSAOAEP, rsa: k}, nil
	case "PRIVATE KEY":
		raw, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse TEE key: PKCS#8: %w", err)
		}
		switch k := raw.(type) {
		case *ecdsa.PrivateKey:
			switch k.Curve {
			case elliptic.P256():
				return &TEEKey{algorithm: KeyAlgorithmP256, ec: k}, nil
			case elliptic.P521():
				return &TEEKey{algorithm: KeyAlgorithmP521, ec: k}, nil
			}
			return nil, fmt.Errorf("parse TEE key: unsupported curve %s", k.Curve.Params().Name)
		case *rsa.PrivateKey:
			return &TEEKey{algorithm: KeyAlgorithmRSAOAEP, rsa: k}, nil
		}
		return nil, fmt.Errorf("parse TEE key: unsupported key type %T", raw)
	default:
		return nil, fmt.Errorf("parse TEE key: unsupported PEM block %q", blk.Type)
	}
}

// Algorithm returns the aa.toml name of the key's algorithm.
func (k *TEEKey) Algorithm() string { return k.algorithm }

// PublicJWK returns the tee-pubkey sent in runtime-data, encoded by
// go-jose (EC coordinates padded to the curve size, RSA n and e minimal).
func (k *TEEKey) PublicJWK() TEEPubKey {
	var jwk jose.JSONWebKey
	if k.rsa != nil {
		jwk = jose.JSONWebKey{Key: &k.rsa.PublicKey, Algorithm: jweAlgRSAOAEP256}
	} else {
		jwk = jose.JSONWebKey{Key: &k.ec.PublicKey, Algorithm: jweAlgECDHESA256KW}
	}
	var pub TEEPubKey
	b, err := jwk.MarshalJSON()
	if err == nil {
		err = json.Unmarshal(b, &pub)
	}
	if err != nil {
		// Unreachable: the key was generated or parsed on a supported curve.
		panic(fmt.Sprintf("kbs: encode TEE public key: %v", err))
	}
	return pub
}

// PrivatePEM returns the private key as guest-components' tee_keypair PEM:
// PKCS#1 for RSA, PKCS#8 for EC. The caller owns the secret it returns.
func (k *TEEKey) PrivatePEM() ([]byte, error) {
	if k.rsa != nil {
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.rsa)}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.ec)
	if err != nil {
		return nil, fmt.Errorf("encode TEE key as PKCS#8: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decryptionKey is what go-jose needs to open a JWE to this key.
func (k *TEEKey) decryptionKey() any {
	if k.rsa != nil {
		return k.rsa
	}
	return k.ec
}
