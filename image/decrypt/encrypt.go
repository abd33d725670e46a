package decrypt

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"
)

// Encrypter is the producer side: it encrypts one layer blob with a fresh
// random layer key (ocicrypt AES_256_CTR_HMAC_SHA256) and, once the
// ciphertext was read to the end, wraps the private options for the
// attestation-agent provider. It is used by `cocoonctl encrypt` and tests.
// Call Annotations or PrivateOptions once: either clears the layer key.
type Encrypter struct {
	r           io.Reader
	fin         blockcipher.Finalizer
	plainDigest digest.Digest
	done        bool
}

// NewEncrypter encrypts plain, the compressed layer blob whose digest is
// plainDigest (recorded in the private options for the consumer).
func NewEncrypter(plain io.Reader, plainDigest digest.Digest) (*Encrypter, error) {
	if err := plainDigest.Validate(); err != nil {
		return nil, fmt.Errorf("encrypt layer: plain digest: %w", err)
	}
	lbch, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: %w", plainDigest, err)
	}
	r, fin, err := lbch.Encrypt(plain, blockcipher.AES256CTR)
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: %w", plainDigest, err)
	}
	return &Encrypter{r: r, fin: fin, plainDigest: plainDigest}, nil
}

// Read returns ciphertext.
func (e *Encrypter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.done = true
	}
	return n, err
}

// Annotations wraps the layer key with kek for kid (A256GCM, random IV) and
// returns the descriptor annotations: the attestation-agent packet and
// pubopts, both as ocicrypt and coco_keyprovider write them. Call it only
// after Read returned io.EOF.
func (e *Encrypter) Annotations(kek []byte, kid string) (map[string]string, error) {
	if !e.done {
		return nil, errors.New("encrypt layer: annotations requested before the ciphertext was read to the end")
	}
	lbco, err := e.fin()
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: finalize: %w", e.plainDigest, err)
	}
	defer clear(lbco.Private.SymmetricKey)
	lbco.Private.Digest = e.plainDigest
	plbco, err := json.Marshal(lbco.Private)
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: private options: %w", e.plainDigest, err)
	}
	defer clear(plbco)
	pub, err := json.Marshal(lbco.Public)
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: public options: %w", e.plainDigest, err)
	}
	packet, err := WrapKey(kek, kid, plbco)
	if err != nil {
		return nil, fmt.Errorf("encrypt layer %s: %w", e.plainDigest, err)
	}
	return map[string]string{
		AnnotationAttestationAgent: base64.StdEncoding.EncodeToString(packet),
		AnnotationPubOpts:          base64.StdEncoding.EncodeToString(pub),
	}, nil
}

// PrivateOptions returns the PLBCO JSON after the ciphertext was read to
// the end, for wrapping by another key wrapper (tests wrap it for JWE
// recipients). The caller must clear it.
func (e *Encrypter) PrivateOptions() (plbco, pubopts []byte, err error) {
	if !e.done {
		return nil, nil, errors.New("encrypt layer: options requested before the ciphertext was read to the end")
	}
	lbco, err := e.fin()
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt layer %s: finalize: %w", e.plainDigest, err)
	}
	defer clear(lbco.Private.SymmetricKey)
	lbco.Private.Digest = e.plainDigest
	if plbco, err = json.Marshal(lbco.Private); err != nil {
		return nil, nil, err
	}
	if pubopts, err = json.Marshal(lbco.Public); err != nil {
		return nil, nil, err
	}
	return plbco, pubopts, nil
}
