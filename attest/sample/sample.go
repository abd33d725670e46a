// Package sample is the attester and verifier of Trustee's "sample" TEE:
// evidence with no hardware behind it, for development and tests where no
// TDX, SNP or TPM device exists.
//
// Sample evidence proves nothing about the platform. The package must never
// be presented as a security boundary: Trustee's default resource policy
// denies the sample TEE, and so does cocoon-kbs.
package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cocoon-cc/cocoon/attest"
)

// Evidence is the sample TEE evidence JSON, as guest-components emits it.
type Evidence struct {
	SVN        string `json:"svn"`
	ReportData string `json:"report_data"`
}

// Attester produces sample evidence.
type Attester struct{}

// NewAttester returns the sample attester (always available).
func NewAttester() *Attester { return &Attester{} }

func init() { attest.RegisterPlatform(Platform{}) }

// Platform is the sample TEE's attest.Platform: it binds no init-data and
// has no runtime measurement register.
type Platform struct{}

// TEE returns "sample".
func (Platform) TEE() string { return attest.TEESample }

// TEE implements attest.Attester.
func (*Attester) TEE() string { return attest.TEESample }

// Evidence implements attest.Attester: the report data is carried verbatim
// (no padding), standard base64.
func (*Attester) Evidence(_ context.Context, reportData []byte) (json.RawMessage, error) {
	b, err := json.Marshal(Evidence{SVN: "1", ReportData: base64.StdEncoding.EncodeToString(reportData)})
	if err != nil {
		return nil, fmt.Errorf("sample evidence: %w", err)
	}
	return b, nil
}

// Verifier checks sample evidence: only the report-data binding, since
// there is no signature to check.
type Verifier struct{}

// NewVerifier returns the sample verifier.
func NewVerifier() *Verifier { return &Verifier{} }

// TEE implements attest.Verifier.
func (*Verifier) TEE() string { return attest.TEESample }

// Verify implements attest.Verifier. The claims mirror Trustee's sample
// verifier, fixed example values included; report_data stays base64. Sample
// evidence carries no init-data, so no init_data claim is produced.
func (*Verifier) Verify(_ context.Context, evidence json.RawMessage, expectedReportData []byte) (attest.Claims, error) {
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, fmt.Errorf("sample verifier: decode evidence: %w", err)
	}
	if ev.SVN == "" {
		return nil, errors.New("sample verifier: evidence has no svn")
	}
	rd, err := base64.StdEncoding.DecodeString(ev.ReportData)
	if err != nil {
		return nil, fmt.Errorf("sample verifier: decode report_data: %w", err)
	}
	if expectedReportData != nil && !bytes.Equal(rd, expectedReportData) {
		return nil, errors.New("sample verifier: REPORT_DATA is different from that in Sample Quote")
	}
	return attest.Claims{
		"svn":              ev.SVN,
		"report_data":      ev.ReportData,
		"launch_digest":    "abcde",
		"platform_version": map[string]any{"major": 1, "minor": 4},
		"debug":            false,
	}, nil
}

var (
	_ attest.Attester = (*Attester)(nil)
	_ attest.Verifier = (*Verifier)(nil)
)
