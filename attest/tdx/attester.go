package tdx

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/google/go-tdx-guest/client"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
)

// AttesterOptions configures NewAttester. The zero value uses configfs-tsm
// and the default event log and measurement paths.
type AttesterOptions struct {
	// QuoteProvider returns a TD quote for 64 bytes of report data. Nil
	// selects go-tdx-guest's configfs-tsm provider.
	QuoteProvider client.QuoteProvider
	// CCELPath is the CCEL ACPI data table; empty means DefaultCCELPath.
	CCELPath string
	// AAELPath is the Attestation Agent event log; empty means $AAEL_PATH
	// or DefaultAAELPath.
	AAELPath string
	// EventLog, when non-nil, is sent as cc_eventlog verbatim instead of
	// reading CCELPath and AAELPath.
	EventLog []byte
	// MeasurementsDir holds rtmr<N>:sha384; empty means
	// DefaultMeasurementsDir.
	MeasurementsDir string
}

// Attester produces TDX evidence and extends RTMRs.
type Attester struct {
	qp       client.QuoteProvider
	ccel     string
	aael     string
	eventLog []byte
	mrDir    string
}

var (
	_ attest.Attester         = (*Attester)(nil)
	_ attest.RuntimeMeasurer  = (*Attester)(nil)
	_ eventlog.RegisterReader = (*Attester)(nil)
)

// NewAttester returns a TDX attester.
func NewAttester(opts AttesterOptions) (attest.Attester, error) {
	a := &Attester{qp: opts.QuoteProvider, ccel: opts.CCELPath, aael: opts.AAELPath, eventLog: opts.EventLog, mrDir: opts.MeasurementsDir}
	if a.qp == nil {
		qp, err := client.GetQuoteProvider()
		if err != nil {
			return nil, fmt.Errorf("tdx: open quote provider: %w", err)
		}
		a.qp = qp
	}
	if a.ccel == "" {
		a.ccel = DefaultCCELPath
	}
	if a.aael == "" {
		a.aael = os.Getenv("AAEL_PATH")
	}
	if a.aael == "" {
		a.aael = DefaultAAELPath
	}
	if a.mrDir == "" {
		a.mrDir = DefaultMeasurementsDir
	}
	return a, nil
}

// TEE returns "tdx".
func (*Attester) TEE() string { return attest.TEETDX }

// Evidence is the tdx attester's evidence: base64 (standard alphabet) of
// the event log (or null) and of the TD quote.
type Evidence struct {
	CCEventLog *string `json:"cc_eventlog"`
	Quote      string  `json:"quote"`
}

// Evidence returns {"cc_eventlog":...,"quote":...} for reportData
// zero-padded to 64 bytes; longer report data is refused.
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
		return nil, fmt.Errorf("tdx: get quote: %w", err)
	}
	log := a.eventLog
	if log == nil {
		if log, err = readEventLog(a.ccel, a.aael); err != nil {
			return nil, err
		}
	}
	ev := Evidence{Quote: base64.StdEncoding.EncodeToString(quote)}
	if log != nil {
		s := base64.StdEncoding.EncodeToString(log)
		ev.CCEventLog = &s
	}
	out, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("tdx: serialize evidence: %w", err)
	}
	return out, nil
}

// ExtendRuntimeMeasurement extends the RTMR that PCR register maps to (see
// RTMRIndex) with digest, zero-padded to 48 bytes, through sysfs.
func (a *Attester) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rtmr, err := RTMRIndex(register)
	if err != nil {
		return err
	}
	if len(digest) == 0 || len(digest) > RTMRSize {
		return fmt.Errorf("tdx: extend RTMR%d: digest is %d bytes, want 1 to %d", rtmr, len(digest), RTMRSize)
	}
	data := make([]byte, RTMRSize)
	copy(data, digest)
	f, err := os.OpenFile(a.rtmrPath(rtmr), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("tdx: extend RTMR%d: %w", rtmr, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("tdx: extend RTMR%d: %w", rtmr, werr)
	}
	if cerr != nil {
		return fmt.Errorf("tdx: extend RTMR%d: %w", rtmr, cerr)
	}
	return nil
}

// rtmrPath is the sysfs measurement file of an RTMR.
func (a *Attester) rtmrPath(rtmr int) string {
	return filepath.Join(a.mrDir, "rtmr"+strconv.Itoa(rtmr)+":sha384")
}

// RuntimeMeasurement returns the current value of the RTMR that PCR
// register maps to (see RTMRIndex), read from
// <MeasurementsDir>/rtmr<N>:sha384 as guest-components does, so
// attest/eventlog can recover from a crash between extending and
// recording.
func (a *Attester) RuntimeMeasurement(ctx context.Context, register int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rtmr, err := RTMRIndex(register)
	if err != nil {
		return nil, err
	}
	v, err := os.ReadFile(a.rtmrPath(rtmr))
	if err != nil {
		return nil, fmt.Errorf("tdx: read RTMR%d: %w", rtmr, err)
	}
	if len(v) != RTMRSize {
		return nil, fmt.Errorf("tdx: read RTMR%d: got %d bytes, want %d", rtmr, len(v), RTMRSize)
	}
	return v, nil
}
