package snp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
	"github.com/google/uuid"

	"github.com/cocoon-cc/cocoon/attest"
)

// AttesterOptions configures NewAttester. The zero value uses the real
// device.
type AttesterOptions struct {
	// QuoteProvider returns a raw report followed by its certificate table.
	// Nil selects go-sev-guest's client.GetQuoteProvider (configfs-tsm
	// first, then /dev/sev-guest).
	QuoteProvider client.QuoteProvider
}

// Attester produces SEV-SNP evidence.
type Attester struct {
	qp client.QuoteProvider
}

var _ attest.Attester = (*Attester)(nil)

// NewAttester returns an SEV-SNP attester.
func NewAttester(opts AttesterOptions) (attest.Attester, error) {
	qp := opts.QuoteProvider
	if qp == nil {
		var err error
		qp, err = client.GetQuoteProvider()
		if err != nil {
			return nil, fmt.Errorf("snp: open quote provider: %w", err)
		}
	}
	return &Attester{qp: qp}, nil
}

// TEE returns "snp".
func (*Attester) TEE() string { return attest.TEESNP }

// Evidence returns {"attestation_report":{...},"cert_chain":[...]|null} for
// reportData zero-padded to 64 bytes; longer report data is refused.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	rd, err := padReportData(reportData)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	quote, err := a.qp.GetRawQuote(rd)
	if err != nil {
		return nil, fmt.Errorf("snp: get attestation report: %w", err)
	}
	ev, err := evidenceFromQuote(quote)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(ev.AttestationReport.ReportData, rd[:]) {
		return nil, errors.New("snp: firmware returned a report for different report data")
	}
	out, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("snp: serialize evidence: %w", err)
	}
	return out, nil
}

// evidenceFromQuote splits a raw quote (report || certificate table) into
// evidence. go-sev-guest appends its own platform-info entry to the table;
// it is not firmware output and is dropped so the chain matches what the
// upstream attester reports.
func evidenceFromQuote(quote []byte) (*Evidence, error) {
	if len(quote) < ReportSize {
		return nil, fmt.Errorf("snp: quote is %d bytes, shorter than a report", len(quote))
	}
	report, err := ParseReport(quote[:ReportSize])
	if err != nil {
		return nil, fmt.Errorf("snp: parse attestation report: %w", err)
	}
	ev := &Evidence{AttestationReport: *report}
	var table abi.CertTable
	if err := table.Unmarshal(quote[ReportSize:]); err != nil {
		return nil, fmt.Errorf("snp: parse certificate table: %w", err)
	}
	extra := uuid.MustParse(abi.ExtraPlatformInfoGUID)
	for _, e := range table.Entries {
		if e.GUID == extra {
			continue
		}
		ev.CertChain = append(ev.CertChain, CertTableEntry{CertType: CertTypeFromGUID(e.GUID), Data: cloneBytes(e.RawCert)})
	}
	return ev, nil
}
