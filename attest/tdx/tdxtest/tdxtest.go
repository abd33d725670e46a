// Package tdxtest provides a TDX attester that mints v4 quotes under a
// fake Intel PCK chain, and a matching tdx verifier trusting that fake
// root, so code using attest.Attester and attest.Verifier can be tested
// through go-tdx-guest's real quote verification without hardware.
//
// The quotes are go-tdx-guest's sample quote with REPORT_DATA and
// MR_CONFIG_ID replaced, a fresh attestation key and signature, and a QE
// report re-signed by the fake PCK key; the PCK leaf carries the sample's
// SGX extension. It is for tests only: such quotes prove nothing.
package tdxtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/testing/testdata"
	"github.com/google/go-tdx-guest/verify"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/tdx"
)

var oidSGXExtension = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}

type config struct {
	mrConfigID    []byte
	untrustedRoot bool
	eventLog      []byte
	measurements  string
	aaelPath      string
}

// Option customises New.
type Option func(*config)

// WithMRConfigID sets MR_CONFIG_ID (the init-data binding); the value is
// zero-padded or truncated to 48 bytes as the host regularises an init-data
// digest.
func WithMRConfigID(b []byte) Option {
	return func(c *config) { c.mrConfigID = tdx.MRConfigIDForInitData(b) }
}

// WithUntrustedRoot makes New return a verifier trusting a different fake
// root, so the attester's evidence must fail chain verification.
func WithUntrustedRoot() Option { return func(c *config) { c.untrustedRoot = true } }

// WithEventLog sets the cc_eventlog bytes the attester sends. When the log
// parses, the quotes' RTMRs are set to its replay, so it verifies.
func WithEventLog(log []byte) Option { return func(c *config) { c.eventLog = log } }

// WithMeasurementsDir sets the attester's RTMR sysfs directory.
func WithMeasurementsDir(dir string) Option { return func(c *config) { c.measurements = dir } }

// WithAAELPath makes the attester read its AAEL from path (with no CCEL,
// so cc_eventlog is the fixed Spec ID header, the AAEL and the end flag,
// as guest-components sends it) and emulates the RTMRs: they start at
// zero, ExtendRuntimeMeasurement extends them (SHA-384 of the value and
// the digest zero-padded to 48 bytes, as the TDX module does) and
// RuntimeMeasurement reads them instead of sysfs, and every quote carries
// their current values. An AAEL written by attest/eventlog through this
// attester therefore verifies until the log or the RTMRs change. Not to be
// combined with WithEventLog.
func WithAAELPath(path string) Option { return func(c *config) { c.aaelPath = path } }

// Chain is a fake Intel PCK chain.
type Chain struct {
	Root, Intermediate, PCK *x509.Certificate
	PCKKey                  *ecdsa.PrivateKey
	// PEM is the PCK, intermediate and root certificates, as a quote
	// carries them.
	PEM []byte
}

// Pool returns a pool holding the chain's root.
func (c *Chain) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

var (
	sampleOnce sync.Once
	sample     *pb.QuoteV4
	sgxExt     pkix.Extension
	sampleErr  error
)

func loadSample() (*pb.QuoteV4, pkix.Extension, error) {
	sampleOnce.Do(func() {
		parsed, err := abi.QuoteToProto(testdata.RawQuote)
		if err != nil {
			sampleErr = fmt.Errorf("parse sample quote: %w", err)
			return
		}
		q, ok := parsed.(*pb.QuoteV4)
		if !ok {
			sampleErr = fmt.Errorf("sample quote is %T", parsed)
			return
		}
		chain, err := verify.ExtractChainFromQuote(q)
		if err != nil {
			sampleErr = fmt.Errorf("sample PCK chain: %w", err)
			return
		}
		for _, e := range chain.PCKCertificate.Extensions {
			if e.Id.Equal(oidSGXExtension) {
				sgxExt = e
				sample = q
				return
			}
		}
		sampleErr = errors.New("sample PCK certificate has no SGX extension")
	})
	return sample, sgxExt, sampleErr
}

// NewChain builds a fake PCK chain with Intel's common names (ECDSA P-256),
// valid from an hour ago for a year.
func NewChain() (*Chain, error) {
	_, ext, err := loadSample()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	mk := func(cn string, serial int64, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool) (*x509.Certificate, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, nil, err
		}
		skid := sha256.Sum256(spki)
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(365 * 24 * time.Hour),
			SignatureAlgorithm:    x509.ECDSAWithSHA256,
			BasicConstraintsValid: true,
			IsCA:                  ca,
			SubjectKeyId:          skid[:20],
			CRLDistributionPoints: []string{"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"},
		}
		if ca {
			tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		} else {
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
			tmpl.ExtraExtensions = []pkix.Extension{ext}
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			return nil, nil, err
		}
		cert, err := x509.ParseCertificate(der)
		return cert, key, err
	}
	root, rootKey, err := mk("Intel SGX Root CA", 1, nil, nil, true)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: root certificate: %w", err)
	}
	inter, interKey, err := mk("Intel SGX PCK Platform CA", 2, root, rootKey, true)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: intermediate certificate: %w", err)
	}
	pck, pckKey, err := mk("Intel SGX PCK Certificate", 3, inter, interKey, false)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: PCK certificate: %w", err)
	}
	var chainPEM []byte
	for _, c := range []*x509.Certificate{pck, inter, root} {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return &Chain{Root: root, Intermediate: inter, PCK: pck, PCKKey: pckKey, PEM: chainPEM}, nil
}

// QuoteProvider mints v4 quotes signed under Chain.
type QuoteProvider struct {
	Chain      *Chain
	MRConfigID []byte // 48 bytes
	// RTMRs, when set, replace the sample quote's four RTMRs.
	RTMRs [][]byte
	mu    sync.Mutex
	ak    *ecdsa.PrivateKey
	// emulated, when set, supplies the RTMRs instead of RTMRs.
	emulated *rtmrState
}

// IsSupported returns nil.
func (*QuoteProvider) IsSupported() error { return nil }

// GetRawQuote returns a quote whose REPORT_DATA is reportData.
func (p *QuoteProvider) GetRawQuote(reportData [64]byte) ([]uint8, error) {
	tmpl, _, err := loadSample()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.ak == nil {
		if p.ak, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			p.mu.Unlock()
			return nil, fmt.Errorf("tdxtest: attestation key: %w", err)
		}
	}
	ak := p.ak
	p.mu.Unlock()

	q := proto.Clone(tmpl).(*pb.QuoteV4)
	q.TdQuoteBody.ReportData = append([]byte(nil), reportData[:]...)
	if p.MRConfigID != nil {
		q.TdQuoteBody.MrConfigId = append([]byte(nil), p.MRConfigID...)
	}
	switch {
	case p.emulated != nil:
		q.TdQuoteBody.Rtmrs = p.emulated.values()
	case p.RTMRs != nil:
		q.TdQuoteBody.Rtmrs = p.RTMRs
	}
	sd := q.SignedData
	akBytes := append(fixed32(ak.X), fixed32(ak.Y)...)
	sd.EcdsaAttestationKey = akBytes
	qrc := sd.CertificationData.QeReportCertificationData
	binding := sha256.Sum256(append(append([]byte(nil), akBytes...), qrc.QeAuthData.Data...))
	qrc.QeReport.ReportData = append(binding[:], make([]byte, 32)...)
	rawQE, err := abi.EnclaveReportToAbiBytes(qrc.QeReport)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: encode QE report: %w", err)
	}
	if qrc.QeReportSignature, err = signRaw(p.Chain.PCKKey, rawQE); err != nil {
		return nil, err
	}
	chain := qrc.PckCertificateChainData
	delta := int64(len(p.Chain.PEM)) - int64(len(chain.PckCertChain))
	chain.PckCertChain = append([]byte(nil), p.Chain.PEM...)
	chain.Size = uint32(len(chain.PckCertChain))
	sd.CertificationData.Size = uint32(int64(sd.CertificationData.Size) + delta)
	q.SignedDataSize = uint32(int64(q.SignedDataSize) + delta)
	header, err := abi.HeaderToAbiBytes(q.Header)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: encode header: %w", err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.TdQuoteBody)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: encode body: %w", err)
	}
	if sd.Signature, err = signRaw(ak, append(header, body...)); err != nil {
		return nil, err
	}
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: encode quote: %w", err)
	}
	return raw, nil
}

func fixed32(n *big.Int) []byte {
	out := make([]byte, 32)
	n.FillBytes(out)
	return out
}

// signRaw signs SHA-256(msg) and returns r||s, 32 bytes each.
func signRaw(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, fmt.Errorf("tdxtest: sign: %w", err)
	}
	return append(fixed32(r), fixed32(s)...), nil
}

// New returns an attester minting quotes under a fresh fake chain and a
// verifier trusting that chain's root (or another root with
// WithUntrustedRoot).
func New(tb testing.TB, opts ...Option) (attest.Attester, attest.Verifier) {
	tb.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	chain, err := NewChain()
	if err != nil {
		tb.Fatalf("tdxtest: %v", err)
	}
	qp := &QuoteProvider{Chain: chain, MRConfigID: cfg.mrConfigID}
	if cfg.eventLog != nil {
		if events, err := tdx.ParseEventLog(cfg.eventLog); err == nil {
			if rtmrs, err := tdx.ReplayRTMRs(events); err == nil {
				for _, r := range rtmrs {
					qp.RTMRs = append(qp.RTMRs, append([]byte(nil), r[:]...))
				}
			}
		}
	}
	aael := "/nonexistent/AAEL"
	if cfg.aaelPath != "" {
		if cfg.eventLog != nil {
			tb.Fatal("tdxtest: WithAAELPath and WithEventLog exclude each other")
		}
		aael = cfg.aaelPath
		qp.emulated = &rtmrState{}
	}
	a, err := tdx.NewAttester(tdx.AttesterOptions{
		QuoteProvider:   qp,
		EventLog:        cfg.eventLog,
		CCELPath:        "/nonexistent/CCEL",
		AAELPath:        aael,
		MeasurementsDir: cfg.measurements,
	})
	if err != nil {
		tb.Fatalf("tdxtest: attester: %v", err)
	}
	if qp.emulated != nil {
		a = &emulatedAttester{Attester: a.(*tdx.Attester), rtmrs: qp.emulated}
	}
	trusted := chain
	if cfg.untrustedRoot {
		if trusted, err = NewChain(); err != nil {
			tb.Fatalf("tdxtest: %v", err)
		}
	}
	v, err := tdx.NewVerifier(tdx.VerifierOptions{TrustedRoots: trusted.Pool()})
	if err != nil {
		tb.Fatalf("tdxtest: verifier: %v", err)
	}
	return a, v
}

// Tamper returns evidence with one bit of the signed quote body (in
// MR_TD) flipped; a verifier must reject it.
func Tamper(tb testing.TB, evidence json.RawMessage) json.RawMessage {
	tb.Helper()
	return ModifyQuote(tb, evidence, func(raw []byte) { raw[48+136] ^= 1 })
}

// ModifyQuote decodes evidence, lets f change the raw quote in place, and
// re-encodes it.
func ModifyQuote(tb testing.TB, evidence json.RawMessage, f func(raw []byte)) json.RawMessage {
	tb.Helper()
	var ev tdx.Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		tb.Fatalf("tdxtest: decode evidence: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(ev.Quote)
	if err != nil {
		tb.Fatalf("tdxtest: decode quote: %v", err)
	}
	f(raw)
	ev.Quote = base64.StdEncoding.EncodeToString(raw)
	out, err := json.Marshal(&ev)
	if err != nil {
		tb.Fatalf("tdxtest: encode evidence: %v", err)
	}
	return out
}

// rtmrState holds emulated RTMR values.
type rtmrState struct {
	mu    sync.Mutex
	rtmrs [4][tdx.RTMRSize]byte
}

func (s *rtmrState) values() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(s.rtmrs))
	for i := range s.rtmrs {
		out[i] = append([]byte(nil), s.rtmrs[i][:]...)
	}
	return out
}

// emulatedAttester is a tdx attester whose RTMRs are emulated in memory
// (WithAAELPath).
type emulatedAttester struct {
	*tdx.Attester
	rtmrs *rtmrState
}

// ExtendRuntimeMeasurement extends the emulated RTMR that PCR register
// maps to with digest zero-padded to 48 bytes.
func (a *emulatedAttester) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rtmr, err := tdx.RTMRIndex(register)
	if err != nil {
		return err
	}
	if len(digest) == 0 || len(digest) > tdx.RTMRSize {
		return fmt.Errorf("tdxtest: extend RTMR%d: digest is %d bytes, want 1 to %d", rtmr, len(digest), tdx.RTMRSize)
	}
	data := make([]byte, tdx.RTMRSize)
	copy(data, digest)
	a.rtmrs.mu.Lock()
	defer a.rtmrs.mu.Unlock()
	h := sha512.New384()
	h.Write(a.rtmrs.rtmrs[rtmr][:])
	h.Write(data)
	copy(a.rtmrs.rtmrs[rtmr][:], h.Sum(nil))
	return nil
}

// RuntimeMeasurement returns the emulated RTMR that PCR register maps to.
func (a *emulatedAttester) RuntimeMeasurement(ctx context.Context, register int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rtmr, err := tdx.RTMRIndex(register)
	if err != nil {
		return nil, err
	}
	return a.rtmrs.values()[rtmr], nil
}
