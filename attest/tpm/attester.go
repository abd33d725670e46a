package tpm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
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
	// AAELPath is the Attestation Agent event log written by
	// attest/eventlog (usually eventlog.DefaultDir/eventlog); empty means
	// none. When the file exists and is not empty, its bytes go into the
	// evidence as "aa_eventlog", and every PCR its records name is added
	// to the quoted selection.
	AAELPath string
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
	aaelPath string
	// akPersistent is set when ak lives at a persistent handle, which
	// must not be flushed.
	akPersistent bool
}

var (
	_ attest.Attester         = (*Attester)(nil)
	_ attest.RuntimeMeasurer  = (*Attester)(nil)
	_ eventlog.RegisterReader = (*Attester)(nil)
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
	return &Attester{rw: rw, pcrs: pcrs, akHandle: opts.AKHandle, aaelPath: opts.AAELPath}, nil
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
// or zero-padded) as qualifying data. With AAELPath set and the file not
// empty, the log is read before the quote and sent as "aa_eventlog"; the
// PCRs its records name are quoted too. An extend that lands between
// reading the log and writing its record (attest/eventlog extends the
// register first) makes that evidence fail verification; attesting again
// after the extend completes succeeds.
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
	aael, err := a.readAAEL()
	if err != nil {
		return nil, err
	}
	pcrs, err := selectionWithAAEL(a.pcrs, aael)
	if err != nil {
		return nil, err
	}
	q, err := ak.Quote(tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: pcrs}, nonce)
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
	if len(aael) > 0 {
		ev.AAEventLog = base64.StdEncoding.EncodeToString(aael)
	}
	values := q.GetPcrs().GetPcrs()
	for _, i := range pcrs {
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

// readAAEL returns the AAEL file's bytes, or nil when there is no
// AAELPath or no file.
func (a *Attester) readAAEL() ([]byte, error) {
	if a.aaelPath == "" {
		return nil, nil
	}
	b, err := os.ReadFile(a.aaelPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: read AAEL: %w", err)
	}
	return b, nil
}

// selectionWithAAEL returns pcrs plus every PCR the AAEL's records name,
// sorted. A log that does not parse is sent as it is with pcrs: the
// verifier refuses it.
func selectionWithAAEL(pcrs []int, aael []byte) ([]int, error) {
	if len(aael) == 0 {
		return pcrs, nil
	}
	events, err := eventlog.Parse(aael)
	if err != nil {
		return pcrs, nil
	}
	out := pcrs
	for _, ev := range events {
		i := int(ev.Index)
		if ev.Type == eventlog.EvNoAction || slices.Contains(out, i) {
			continue
		}
		if ev.Index >= NumPCRs {
			return nil, fmt.Errorf("tpm: AAEL record names PCR %d: %w", ev.Index, ErrBadRegister)
		}
		if len(out) == len(pcrs) {
			out = slices.Clone(pcrs)
		}
		out = append(out, i)
	}
	slices.Sort(out)
	return out, nil
}

// RuntimeMeasurement reads SHA-256 PCR register, so attest/eventlog can
// recover from a crash between extending and recording.
func (a *Attester) RuntimeMeasurement(ctx context.Context, register int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if register < 0 || register >= NumPCRs {
		return nil, fmt.Errorf("tpm: read PCR %d: %w", register, ErrBadRegister)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rw == nil {
		return nil, errors.New("tpm: attester is closed")
	}
	v, err := tpm2.ReadPCR(a.rw, register, tpm2.AlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("tpm: read PCR %d: %w", register, err)
	}
	if len(v) != sha256.Size {
		return nil, fmt.Errorf("tpm: read PCR %d: got %d bytes, want %d", register, len(v), sha256.Size)
	}
	return v, nil
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
