package snp

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cocoon-cc/cocoon/attest"
)

// VerifierOptions configures NewVerifier. The zero value trusts AMD's
// published roots (embedded in go-sev-guest) and fetches missing VCEKs
// from AMD KDS.
type VerifierOptions struct {
	// TrustedRoots maps a product line ("Milan", "Genoa", "Turin") to the
	// ARK/ASK pairs to trust. Nil (and no TrustedRootsPEM) selects
	// go-sev-guest's embedded AMD roots.
	TrustedRoots map[string][]*trust.AMDRootCerts
	// TrustedRootsPEM maps a product line to a PEM bundle holding its ASK
	// (or ASVK) and ARK, as AMD KDS serves cert_chain. Merged into
	// TrustedRoots.
	TrustedRootsPEM map[string][]byte
	// Product forces the product for version 2 reports, which do not name
	// their CPU.
	Product *spb.SevProduct
	// Now is the time for certificate validity; nil means time.Now.
	Now func() time.Time
	// DisableCertFetching forbids contacting AMD KDS for a VCEK missing from
	// the evidence.
	DisableCertFetching bool
	// Getter overrides the HTTPS client used for AMD KDS.
	Getter trust.HTTPSGetter
}

// Verifier checks SEV-SNP evidence.
type Verifier struct {
	roots   map[string][]*trust.AMDRootCerts
	product *spb.SevProduct
	now     func() time.Time
	noFetch bool
	getter  trust.HTTPSGetter
}

var _ attest.Verifier = (*Verifier)(nil)

// NewVerifier returns an SEV-SNP verifier.
func NewVerifier(opts VerifierOptions) (attest.Verifier, error) {
	v := &Verifier{product: opts.Product, now: opts.Now, noFetch: opts.DisableCertFetching, getter: opts.Getter}
	if v.now == nil {
		v.now = time.Now
	}
	if opts.TrustedRoots != nil || opts.TrustedRootsPEM != nil {
		v.roots = map[string][]*trust.AMDRootCerts{}
		for line, roots := range opts.TrustedRoots {
			v.roots[line] = append(v.roots[line], roots...)
		}
		for line, pem := range opts.TrustedRootsPEM {
			root := trust.AMDRootCertsProduct(line)
			if err := root.FromKDSCertBytes(pem); err != nil {
				return nil, fmt.Errorf("snp: parse trusted roots for %s: %w", line, err)
			}
			v.roots[line] = append(v.roots[line], root)
		}
	}
	return v, nil
}

// TEE returns "snp".
func (*Verifier) TEE() string { return attest.TEESNP }

// ParseEvidence decodes SNP evidence JSON and re-encodes its report into
// the firmware's binary layout.
func ParseEvidence(evidence []byte) (*Evidence, []byte, error) {
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, nil, fmt.Errorf("snp: decode evidence: %w", err)
	}
	raw, err := ev.AttestationReport.Raw()
	if err != nil {
		return nil, nil, fmt.Errorf("snp: evidence report: %w", err)
	}
	return &ev, raw, nil
}

// Verify checks the report's certificate chain and signature, then that
// REPORT_DATA equals expectedReportData zero-padded to 64 bytes.
func (v *Verifier) Verify(ctx context.Context, evidence json.RawMessage, expectedReportData []byte) (attest.Claims, error) {
	want, err := padReportData(expectedReportData)
	if err != nil {
		return nil, fmt.Errorf("snp: expected report data: %w", err)
	}
	ev, raw, err := ParseEvidence(evidence)
	if err != nil {
		return nil, err
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("snp: decode report: %w", err)
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	for _, c := range ev.CertChain {
		switch c.CertType.Name {
		case "ARK":
			chain.ArkCert = c.Data
		case "ASK":
			chain.AskCert = c.Data
		case "VCEK":
			chain.VcekCert = c.Data
		case "VLEK":
			chain.VlekCert = c.Data
		case "OTHER":
			chain.Extras[c.CertType.GUID.String()] = c.Data
		}
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	opts := &verify.Options{
		TrustedRoots:        v.roots,
		Product:             v.product,
		DisableCertFetching: v.noFetch,
		Now:                 v.now(),
		Getter:              v.getter,
	}
	if opts.Getter == nil && !v.noFetch {
		opts.Getter = trust.DefaultHTTPSGetter()
	}
	if err := verify.SnpAttestationContext(ctx, att, opts); err != nil {
		return nil, fmt.Errorf("snp: verify attestation report: %w", err)
	}
	if subtle.ConstantTimeCompare(report.GetReportData(), want[:]) != 1 {
		return nil, errors.New("snp: REPORT_DATA does not match the expected report data")
	}
	return claims(&ev.AttestationReport), nil
}

// claims mirrors Trustee's snp verifier (parse_tee_evidence) and adds a few
// identity fields.
func claims(r *Report) attest.Claims {
	bit := func(v uint64, n uint) bool { return v>>n&1 == 1 }
	signer := "vcek"
	if (r.KeyInfo>>2)&7 == 1 {
		signer = "vlek"
	}
	return attest.Claims{
		"policy_abi_major":        (r.Policy >> 8) & 0xff,
		"policy_abi_minor":        r.Policy & 0xff,
		"policy_smt_allowed":      bit(r.Policy, 16),
		"policy_migrate_ma":       bit(r.Policy, 18),
		"policy_debug_allowed":    bit(r.Policy, 19),
		"policy_single_socket":    bit(r.Policy, 20),
		"reported_tcb_bootloader": r.ReportedTCB.Bootloader,
		"reported_tcb_tee":        r.ReportedTCB.TEE,
		"reported_tcb_snp":        r.ReportedTCB.SNP,
		"reported_tcb_microcode":  r.ReportedTCB.Microcode,
		"platform_tsme_enabled":   bit(r.PlatInfo, 1),
		"platform_smt_enabled":    bit(r.PlatInfo, 0),
		"measurement":             hex.EncodeToString(r.Measurement),
		"report_data":             hex.EncodeToString(r.ReportData),
		"init_data":               hex.EncodeToString(r.HostData),
		"chip_id":                 hex.EncodeToString(r.ChipID),
		"version":                 r.Version,
		"guest_svn":               r.GuestSVN,
		"vmpl":                    r.VMPL,
		"family_id":               hex.EncodeToString(r.FamilyID),
		"image_id":                hex.EncodeToString(r.ImageID),
		"signing_key":             signer,
	}
}

// HostDataForInitData regularises an init-data digest to HOST_DATA's 32
// bytes (zero-padded or truncated), as Trustee compares it.
func HostDataForInitData(digest []byte) []byte {
	out := make([]byte, HostDataSize)
	copy(out, digest)
	return out
}
