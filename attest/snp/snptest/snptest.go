// Package snptest provides an SEV-SNP attester backed by a fake AMD
// certificate chain (go-sev-guest's test-only ARK/ASK/VCEK) and a matching
// snp verifier, so that code using attest.Attester and attest.Verifier can
// be tested through the real go-sev-guest verification path without
// hardware.
//
// It is for tests only: its keys are public test keys and its reports
// prove nothing.
package snptest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/snp"
)

type config struct {
	hostData      []byte
	measurement   []byte
	untrustedRoot bool
	now           time.Time
	reportVersion uint32
	noDebug       bool
}

// Option customises New.
type Option func(*config)

// WithHostData sets HOST_DATA (the init-data binding). The value is
// zero-padded or truncated to 32 bytes, as the host regularises an
// init-data digest.
func WithHostData(b []byte) Option {
	return func(c *config) { c.hostData = snp.HostDataForInitData(b) }
}

// WithMeasurement sets the 48-byte launch MEASUREMENT (zero-padded or
// truncated).
func WithMeasurement(b []byte) Option {
	return func(c *config) {
		c.measurement = make([]byte, 48)
		copy(c.measurement, b)
	}
}

// WithUntrustedRoot makes New return a verifier that trusts a different,
// freshly generated AMD root, so every evidence of the attester must fail
// chain verification.
func WithUntrustedRoot() Option {
	return func(c *config) { c.untrustedRoot = true }
}

// WithReportVersion sets the report format version (default 3, the oldest
// Trustee accepts; 5 adds mitigation vectors).
func WithReportVersion(v uint32) Option {
	return func(c *config) { c.reportVersion = v }
}

// WithoutDebug clears the debug bit of the guest policy, which
// go-sev-guest's fake reports set, as a production guest's policy does.
func WithoutDebug() Option {
	return func(c *config) { c.noDebug = true }
}

// New returns an attester signing reports with a fake VCEK and a verifier
// trusting that fake chain's root (or another root with
// WithUntrustedRoot). Certificate fetching is disabled in the verifier.
func New(tb testing.TB, opts ...Option) (attest.Attester, attest.Verifier) {
	tb.Helper()
	cfg := config{hostData: make([]byte, 32), measurement: make([]byte, 48), now: time.Now(), reportVersion: 3}
	for _, o := range opts {
		o(&cfg)
	}
	product := abi.DefaultSevProduct()
	productName := kds.ProductName(product)
	signer, err := sevtest.DefaultTestOnlyCertChain(productName, cfg.now.Add(-time.Hour))
	if err != nil {
		tb.Fatalf("snptest: fake AMD chain: %v", err)
	}
	qp := &QuoteProvider{Signer: signer, SevProduct: product, HostData: cfg.hostData, Measurement: cfg.measurement, Version: cfg.reportVersion, NoDebug: cfg.noDebug}
	a, err := snp.NewAttester(snp.AttesterOptions{QuoteProvider: qp})
	if err != nil {
		tb.Fatalf("snptest: attester: %v", err)
	}
	trusted := signer
	if cfg.untrustedRoot {
		trusted = otherChain(tb, productName, cfg.now.Add(-time.Hour))
	}
	line := kds.ProductLine(product)
	v, err := snp.NewVerifier(snp.VerifierOptions{
		TrustedRoots: map[string][]*trust.AMDRootCerts{line: {{
			Product:      line,
			ProductLine:  line,
			ProductCerts: &trust.ProductCerts{Ark: trusted.Ark, Ask: trusted.Ask, Asvk: trusted.Asvk},
		}}},
		DisableCertFetching: true,
	})
	if err != nil {
		tb.Fatalf("snptest: verifier: %v", err)
	}
	return a, v
}

var (
	otherOnce sync.Once
	otherARK  *rsa.PrivateKey
	otherASK  *rsa.PrivateKey
	otherErr  error
)

// otherChain builds a valid-looking chain under freshly generated ARK and
// ASK keys (generated once per process: RSA key generation is slow).
func otherChain(tb testing.TB, productName string, created time.Time) *sevtest.AmdSigner {
	tb.Helper()
	otherOnce.Do(func() {
		if otherARK, otherErr = rsa.GenerateKey(rand.Reader, 2048); otherErr != nil {
			return
		}
		otherASK, otherErr = rsa.GenerateKey(rand.Reader, 2048)
	})
	if otherErr != nil {
		tb.Fatalf("snptest: generate other root: %v", otherErr)
	}
	keys := sevtest.DefaultAmdKeys()
	keys.Ark, keys.Ask = otherARK, otherASK
	b := &sevtest.AmdSignerBuilder{
		Keys: keys, ProductName: productName, CSPID: "cocoon-snptest",
		ArkCreationTime: created, AskCreationTime: created, AsvkCreationTime: created,
		VcekCreationTime: created, VlekCreationTime: created,
	}
	s, err := b.TestOnlyCertChain()
	if err != nil {
		tb.Fatalf("snptest: other chain: %v", err)
	}
	return s
}

// QuoteProvider is a client.QuoteProvider that builds and signs a report
// for any report data, with the fields configured here.
type QuoteProvider struct {
	Signer      *sevtest.AmdSigner
	SevProduct  *spb.SevProduct
	HostData    []byte // 32 bytes
	Measurement []byte // 48 bytes
	Version     uint32 // report version, at least 3
	NoDebug     bool   // clear the guest policy's debug bit
}

// IsSupported returns true.
func (*QuoteProvider) IsSupported() bool { return true }

// Product returns the configured product.
func (p *QuoteProvider) Product() *spb.SevProduct { return p.SevProduct }

// GetRawQuote returns a signed report for reportData followed by the fake
// chain's certificate table.
func (p *QuoteProvider) GetRawQuote(reportData [64]byte) ([]uint8, error) {
	cpuid := abi.MaskedCpuid1EaxFromSevProduct(p.SevProduct)
	raw := sevtest.CreateRawReport(&sevtest.TestReportOptions{ReportData: reportData[:], Version: p.Version, FMS: cpuid})
	report := raw[:abi.ReportSize]
	copy(report[0x90:0xC0], p.Measurement)
	copy(report[0xC0:0xE0], p.HostData)
	if p.NoDebug {
		binary.LittleEndian.PutUint64(report[0x08:0x10], abi.SnpPolicyToBytes(abi.SnpPolicy{}))
	}
	copy(report[0x1A0:0x1E0], p.Signer.HWID[:])
	tcb := uint64(p.Signer.TCB)
	for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} {
		binary.LittleEndian.PutUint64(report[off:], tcb)
	}
	r, s, err := p.Signer.Sign(abi.SignedComponent(report))
	if err != nil {
		return nil, fmt.Errorf("snptest: sign report: %w", err)
	}
	if err := abi.SetSignature(r, s, report); err != nil {
		return nil, fmt.Errorf("snptest: set signature: %w", err)
	}
	certs, err := p.Signer.CertTableBytes()
	if err != nil {
		return nil, fmt.Errorf("snptest: certificate table: %w", err)
	}
	return append(append([]byte(nil), report...), certs...), nil
}

// Tamper returns evidence with one bit of the signed MEASUREMENT flipped;
// a verifier must reject it.
func Tamper(tb testing.TB, evidence json.RawMessage) json.RawMessage {
	tb.Helper()
	return Modify(tb, evidence, func(ev *snp.Evidence) { ev.AttestationReport.Measurement[0] ^= 1 })
}

// Modify decodes evidence, applies f, and re-encodes it.
func Modify(tb testing.TB, evidence json.RawMessage, f func(*snp.Evidence)) json.RawMessage {
	tb.Helper()
	var ev snp.Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		tb.Fatalf("snptest: decode evidence: %v", err)
	}
	f(&ev)
	out, err := json.Marshal(&ev)
	if err != nil {
		tb.Fatalf("snptest: encode evidence: %v", err)
	}
	return out
}
