package tpm

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cocoon-cc/cocoon/attest"
)

// AttesterOptions configures NewAttester. The zero value opens the real
// TPM and quotes all 24 SHA-256 PCRs, as upstream does.
type AttesterOptions struct {
	// TPM is the TPM connection; the attester owns it and closes it in
	// Close. Nil opens /dev/tpmrm0, then /dev/tpm0.
	TPM io.ReadWriteCloser
	// PCRs are the SHA-256 PCR indexes to quote; nil quotes 0..23.
	PCRs []int
	// AKHandle is the persistent handle of a provisioned RSA attestation
	// key, as upstream's AA_TPM_AK_HANDLE. Zero tries DefaultAKHandle and,
	// when no key is persisted there, uses go-tpm-tools' RSA AK template.
	AKHandle uint32
}

// DefaultAKHandle is upstream's default persistent AK handle.
const DefaultAKHandle = 0x81010002

// Attester produces TPM evidence and extends PCRs. It is safe for
// concurrent use.
type Attester struct {
	mu       sync.Mutex
	rw       io.ReadWriteCloser
	pcrs     []int
	akHandle uint32
	ak       *client.Key
	// akPersistent is set when ak lives at a persistent handle, which
	// must not be flushed.
	akPersistent bool
}

var (
	_ attest.Attester        = (*Attester)(nil)
	_ attest.RuntimeMeasurer = (*Attester)(nil)
)

// NewAttester returns a TPM attester. The attestation key (the persistent
// key at AKHandle, else go-tpm-tools' RSA AK template in the owner
// hierarchy; RSASSA-SHA256 as upstream) is loaded on first use and kept.
func NewAttester(opts AttesterOptions) (attest.Attester, error) {
	pcrs := opts.PCRs
	if pcrs == nil {
		for i := range NumPCRs {
			pcrs = append(pcrs, i)
		}
	}
	pcrs = slices.Clone(pcrs)
	slices.Sort(pcrs)
	pcrs = slices.Compact(pcrs)
	if len(pcrs) == 0 || pcrs[0] < 0 || pcrs[len(pcrs)-1] >= NumPCRs {
		return nil, fmt.Errorf("tpm: PCR selection %v: %w", opts.PCRs, ErrBadRegister)
	}
	rw := opts.TPM
	if rw == nil {
		var err error
		rw, err = tpm2.OpenTPM()
		if err != nil {
			return nil, fmt.Errorf("tpm: open TPM device: %w", err)
		}
	}
	return &Attester{rw: rw, pcrs: pcrs, akHandle: opts.AKHandle}, nil
}

// TEE returns "tpm".
func (*Attester) TEE() string { return attest.TEETPM }

// Close flushes the attestation key and closes the TPM.
func (a *Attester) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ak != nil && !a.akPersistent {
		a.ak.Close()
	}
	a.ak = nil
	if a.rw == nil {
		return nil
	}
	err := a.rw.Close()
	a.rw = nil
	return err
}

func (a *Attester) key() (*client.Key, error) {
	if a.rw == nil {
		return nil, errors.New("tpm: attester is closed")
	}
	if a.ak != nil {
		return a.ak, nil
	}
	handle := a.akHandle
	if handle == 0 {
		handle = DefaultAKHandle
	}
	ak, err := client.LoadCachedKey(a.rw, tpmutil.Handle(handle), client.NullSession{})
	switch {
	case err == nil:
		a.ak, a.akPersistent = ak, true
	case a.akHandle != 0:
		return nil, fmt.Errorf("tpm: load attestation key at %#x: %w", a.akHandle, err)
	default:
		if ak, err = client.AttestationKeyRSA(a.rw); err != nil {
			return nil, fmt.Errorf("tpm: create attestation key: %w", err)
		}
		a.ak = ak
	}
	return a.ak, nil
}

// Evidence quotes the PCRs with reportData resized to 32 bytes (truncated
// or zero-padded) as qualifying data.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nonce := resizeReportData(reportData)
	a.mu.Lock()
	defer a.mu.Unlock()
	ak, err := a.key()
	if err != nil {
		return nil, err
	}
	q, err := ak.Quote(tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: a.pcrs}, nonce)
	if err != nil {
		return nil, fmt.Errorf("tpm: quote: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(ak.PublicKey())
	if err != nil {
		return nil, fmt.Errorf("tpm: encode attestation key: %w", err)
	}
	ev := Evidence{
		TPMQuote: Quote{
			Signature: base64.StdEncoding.EncodeToString(q.GetRawSig()),
			Message:   base64.StdEncoding.EncodeToString(q.GetQuote()),
		},
		AKPublic: base64.StdEncoding.EncodeToString(der),
	}
	values := q.GetPcrs().GetPcrs()
	for _, i := range a.pcrs {
		v, ok := values[uint32(i)]
		if !ok {
			return nil, fmt.Errorf("tpm: PCR %d missing from quote", i)
		}
		ev.TPMQuote.PCRs = append(ev.TPMQuote.PCRs, hex.EncodeToString(v))
	}
	out, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("tpm: serialize evidence: %w", err)
	}
	return out, nil
}

// ExtendRuntimeMeasurement extends SHA-256 PCR register with a 32-byte
// digest.
func (a *Attester) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if register < 0 || register >= NumPCRs {
		return fmt.Errorf("tpm: extend PCR %d: %w", register, ErrBadRegister)
	}
	if len(digest) != 32 {
		return fmt.Errorf("tpm: extend PCR %d: digest is %d bytes, want 32", register, len(digest))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rw == nil {
		return errors.New("tpm: attester is closed")
	}
	if err := tpm2.PCRExtend(a.rw, tpmutil.Handle(register), tpm2.AlgSHA256, digest, ""); err != nil {
		return fmt.Errorf("tpm: extend PCR %d: %w", register, err)
	}
	return nil
}

// AKPublic returns the attestation key's public key (creating the key if
// needed), for a verifier's TrustedAKs.
func (a *Attester) AKPublic() (crypto.PublicKey, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ak, err := a.key()
	if err != nil {
		return nil, err
	}
	return ak.PublicKey(), nil
}
