package tpmtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/tpm"
)

// ForgedAttester produces tpm evidence without any TPM: a software ECDSA
// key plays the attestation key and signs a hand-built TPMS_ATTEST quote
// over chosen PCR values. Its quotes are well-formed and their signatures
// verify with the key it presents, so they show what a verifier that
// trusts any AK would accept from anyone. It needs no cgo.
type ForgedAttester struct {
	key  *ecdsa.PrivateKey
	pcrs map[int][]byte
}

// NewForgedAttester returns a ForgedAttester with a fresh P-256 key and all
// 24 SHA-256 PCRs zero except those given in pcrs.
func NewForgedAttester(pcrs map[int][]byte) (*ForgedAttester, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tpmtest: generate forged AK: %w", err)
	}
	all := make(map[int][]byte, tpm.NumPCRs)
	for i := range tpm.NumPCRs {
		all[i] = make([]byte, sha256.Size)
	}
	for i, v := range pcrs {
		if i < 0 || i >= tpm.NumPCRs || len(v) != sha256.Size {
			return nil, fmt.Errorf("tpmtest: forged PCR %d: want index 0-23 and 32 bytes", i)
		}
		all[i] = v
	}
	return &ForgedAttester{key: k, pcrs: all}, nil
}

// AKPublic returns the forged attestation key's public half.
func (f *ForgedAttester) AKPublic() crypto.PublicKey { return &f.key.PublicKey }

// TEE returns "tpm".
func (*ForgedAttester) TEE() string { return attest.TEETPM }

// Evidence returns tpm evidence whose quote carries reportData resized to
// tpm.ReportDataSize, as the real attester's.
func (f *ForgedAttester) Evidence(_ context.Context, reportData []byte) (json.RawMessage, error) {
	nonce := make([]byte, tpm.ReportDataSize)
	copy(nonce, reportData)
	sel := tpm2.PCRSelection{Hash: tpm2.AlgSHA256}
	h := sha256.New()
	values := make([]string, 0, tpm.NumPCRs)
	for i := range tpm.NumPCRs {
		sel.PCRs = append(sel.PCRs, i)
		h.Write(f.pcrs[i])
		values = append(values, hex.EncodeToString(f.pcrs[i]))
	}
	handle := tpmutil.Handle(0x81000001)
	msg, err := tpm2.AttestationData{
		Magic:             0xff544347, // TPM_GENERATED_VALUE
		Type:              tpm2.TagAttestQuote,
		QualifiedSigner:   tpm2.Name{Handle: &handle},
		ExtraData:         nonce,
		ClockInfo:         tpm2.ClockInfo{Clock: 1, Safe: 1},
		FirmwareVersion:   1,
		AttestedQuoteInfo: &tpm2.QuoteInfo{PCRSelection: sel, PCRDigest: h.Sum(nil)},
	}.Encode()
	if err != nil {
		return nil, fmt.Errorf("tpmtest: encode forged quote: %w", err)
	}
	digest := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, f.key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("tpmtest: sign forged quote: %w", err)
	}
	sig, err := tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: r, S: s}}.Encode()
	if err != nil {
		return nil, fmt.Errorf("tpmtest: encode forged signature: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	if err != nil {
		return nil, err
	}
	return json.Marshal(tpm.Evidence{
		TPMQuote: tpm.Quote{
			Signature: base64.StdEncoding.EncodeToString(sig),
			Message:   base64.StdEncoding.EncodeToString(msg),
			PCRs:      values,
		},
		AKPublic: base64.StdEncoding.EncodeToString(der),
	})
}

var _ attest.Attester = (*ForgedAttester)(nil)
