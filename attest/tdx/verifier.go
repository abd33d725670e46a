package tdx

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/cocoon-cc/cocoon/attest"
)

// VerifierOptions configures NewVerifier. The zero value trusts Intel's SGX
// root CA (embedded in go-tdx-guest) and fetches no collateral.
type VerifierOptions struct {
	// TrustedRoots are the root CAs the PCK chain must end in; nil means
	// Intel's embedded root.
	TrustedRoots *x509.CertPool
	// Now is the time for certificate validity; nil means time.Now.
	Now func() time.Time
	// GetCollateral fetches Intel's collateral for the quote's platform
	// (TDX TCB info and QE identity, from Intel PCS through Getter) and
	// checks the quote's TCB level against it. go-tdx-guest refuses a
	// quote whose TDX module or QE TCB level is not UpToDate, or whose
	// collateral has expired, so verified claims then carry tcb_status
	// "UpToDate" with the matched level's tcb_date and advisory_ids.
	// Without collateral the TCB level is not known: tcb_status is
	// TCBStatusUnknown.
	GetCollateral bool
	// Getter fetches collateral; nil means go-tdx-guest's HTTPS getter.
	Getter trust.HTTPSGetter
}

// TCBStatusUnknown is the tcb_status claim of a quote verified without
// collateral: its signature chain is good, its TCB level unchecked.
const TCBStatusUnknown = "Unknown"

// Verifier checks TDX evidence.
type Verifier struct {
	roots      *x509.CertPool
	now        func() time.Time
	collateral bool
	getter     trust.HTTPSGetter
}

var _ attest.Verifier = (*Verifier)(nil)

// NewVerifier returns a TDX verifier.
func NewVerifier(opts VerifierOptions) (attest.Verifier, error) {
	v := &Verifier{roots: opts.TrustedRoots, now: opts.Now, collateral: opts.GetCollateral, getter: opts.Getter}
	if v.now == nil {
		v.now = time.Now
	}
	if v.collateral && v.getter == nil {
		v.getter = trust.DefaultHTTPSGetter()
	}
	return v, nil
}

// TEE returns "tdx".
func (*Verifier) TEE() string { return attest.TEETDX }

// ParseEvidence decodes TDX evidence JSON into the raw quote, its v4
// structure, and the raw event log (nil when absent).
func ParseEvidence(evidence []byte) (*pb.QuoteV4, []byte, error) {
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, nil, fmt.Errorf("tdx: decode evidence: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(ev.Quote)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: decode quote: %w", err)
	}
	var log []byte
	if ev.CCEventLog != nil {
		if log, err = base64.StdEncoding.DecodeString(*ev.CCEventLog); err != nil {
			return nil, nil, fmt.Errorf("tdx: decode cc_eventlog: %w", err)
		}
	}
	parsed, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: parse quote: %w", err)
	}
	q, ok := parsed.(*pb.QuoteV4)
	if !ok {
		return nil, nil, fmt.Errorf("tdx: unsupported quote type %T", parsed)
	}
	return q, log, nil
}

// Verify checks the quote (PCK chain to a trusted root, QE report and its
// binding of the attestation key, quote signature), that REPORT_DATA
// equals expectedReportData zero-padded to 64 bytes, and, when the evidence
// carries cc_eventlog, that the log replays to the quote's RTMRs (its
// events are then claimed as "uefi_event_logs").
func (v *Verifier) Verify(ctx context.Context, evidence json.RawMessage, expectedReportData []byte) (attest.Claims, error) {
	want, err := padReportData(expectedReportData)
	if err != nil {
		return nil, fmt.Errorf("tdx: expected report data: %w", err)
	}
	q, log, err := ParseEvidence(evidence)
	if err != nil {
		return nil, err
	}
	now := v.now()
	opts := &verify.Options{
		TrustedRoots:  v.roots,
		Now:           &verify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now},
		GetCollateral: v.collateral,
		Getter:        v.getter,
	}
	if err := verify.TdxQuoteContext(ctx, q, opts); err != nil {
		return nil, fmt.Errorf("tdx: verify quote: %w", err)
	}
	if subtle.ConstantTimeCompare(q.GetTdQuoteBody().GetReportData(), want[:]) != 1 {
		return nil, errors.New("tdx: REPORT_DATA does not match the expected report data")
	}
	claims, err := quoteClaims(q)
	if err != nil {
		return nil, err
	}
	claims["tcb_status"] = TCBStatusUnknown
	if v.collateral {
		// The options now hold the collateral TdxQuoteContext fetched and
		// checked; read back the TCB level it matched.
		level, _, err := verify.SupportedTcbLevelsFromCollateral(q, opts)
		if err != nil {
			return nil, fmt.Errorf("tdx: TCB level from collateral: %w", err)
		}
		maps.Copy(claims, tcbClaims(level))
	}
	if log != nil {
		events, err := checkEventLog(log, q)
		if err != nil {
			return nil, err
		}
		claims["uefi_event_logs"] = eventClaims(events)
	}
	return claims, nil
}

// checkEventLog parses cc_eventlog and requires that replaying it gives
// the quote's RTMR0..3, as Trustee does, and that every AAEL entry's data
// matches its digest.
func checkEventLog(log []byte, q *pb.QuoteV4) ([]Event, error) {
	events, err := ParseEventLog(log)
	if err != nil {
		return nil, err
	}
	replayed, err := ReplayRTMRs(events)
	if err != nil {
		return nil, err
	}
	// An AAEL entry's text is what a policy reads; the RTMR only binds its
	// digest, so the text must hash to it.
	for i, ev := range events {
		if ev.isAAEL() && !ev.digestMatchesData() {
			return nil, fmt.Errorf("tdx: cc_eventlog event %d: AAEL data does not match its digest", i)
		}
	}
	quoted := q.GetTdQuoteBody().GetRtmrs()
	if len(quoted) != 4 {
		return nil, fmt.Errorf("tdx: quote has %d RTMRs, want 4", len(quoted))
	}
	for i := range replayed {
		if subtle.ConstantTimeCompare(replayed[i][:], quoted[i]) != 1 {
			return nil, fmt.Errorf("tdx: cc_eventlog does not replay to RTMR%d of the quote", i)
		}
	}
	return events, nil
}

// tcbClaims names the matched TCB level as Trustee's DCAP verifier does:
// tcb_status, tcb_date, advisory_ids (empty when none), and
// collateral_expiration_status "0" (go-tdx-guest refuses expired
// collateral).
func tcbClaims(level pcs.TcbLevel) map[string]any {
	ids := make([]any, 0, len(level.AdvisoryIDs))
	for _, id := range level.AdvisoryIDs {
		ids = append(ids, id)
	}
	return map[string]any{
		"tcb_status":                   string(level.TcbStatus),
		"tcb_date":                     level.TcbDate,
		"advisory_ids":                 ids,
		"collateral_expiration_status": "0",
	}
}

// Offsets in the v4 quote header and TD 1.0 quote body.
var (
	headerFields = []field{{"version", 0, 2}, {"att_key_type", 2, 4}, {"tee_type", 4, 8}, {"reserved", 8, 12}, {"vendor_id", 12, 28}, {"user_data", 28, 48}}
	bodyFields   = []field{
		{"tcb_svn", 0, 16}, {"mr_seam", 16, 64}, {"mrsigner_seam", 64, 112}, {"seam_attributes", 112, 120},
		{"td_attributes", 120, 128}, {"xfam", 128, 136}, {"mr_td", 136, 184}, {"mr_config_id", 184, 232},
		{"mr_owner", 232, 280}, {"mr_owner_config", 280, 328}, {"rtmr_0", 328, 376}, {"rtmr_1", 376, 424},
		{"rtmr_2", 424, 472}, {"rtmr_3", 472, 520}, {"report_data", 520, 584},
	}
	tdAttributeFlags = []struct {
		name string
		bit  uint
	}{{"debug", 0}, {"septve_disable", 28}, {"protection_keys", 30}, {"key_locker", 31}, {"perfmon", 63}}
)

type field struct {
	name       string
	start, end int
}

// quoteClaims builds claims named as Trustee's tdx verifier
// (generate_parsed_claim): quote.header and quote.body fields as hex,
// td_attributes flags, report_data, and init_data = MR_CONFIG_ID.
func quoteClaims(q *pb.QuoteV4) (attest.Claims, error) {
	header, err := abi.HeaderToAbiBytes(q.GetHeader())
	if err != nil {
		return nil, fmt.Errorf("tdx: encode quote header: %w", err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.GetTdQuoteBody())
	if err != nil {
		return nil, fmt.Errorf("tdx: encode quote body: %w", err)
	}
	if len(header) < 48 || len(body) < 584 {
		return nil, fmt.Errorf("tdx: quote header or body too short (%d, %d bytes)", len(header), len(body))
	}
	hm, bm := map[string]any{}, map[string]any{}
	for _, f := range headerFields {
		hm[f.name] = hex.EncodeToString(header[f.start:f.end])
	}
	for _, f := range bodyFields {
		bm[f.name] = hex.EncodeToString(body[f.start:f.end])
	}
	attrs := binary.LittleEndian.Uint64(body[120:128])
	am := map[string]any{}
	for _, f := range tdAttributeFlags {
		am[f.name] = attrs>>f.bit&1 == 1
	}
	return attest.Claims{
		"quote":         map[string]any{"header": hm, "body": bm},
		"td_attributes": am,
		"report_data":   bm["report_data"],
		"init_data":     bm["mr_config_id"],
	}, nil
}

// ClaimsFromQuote returns the claims of a raw v4 quote WITHOUT verifying
// it: for inspection tools and tests only, never for trust decisions.
func ClaimsFromQuote(raw []byte) (attest.Claims, error) {
	parsed, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("tdx: parse quote: %w", err)
	}
	q, ok := parsed.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("tdx: unsupported quote type %T", parsed)
	}
	return quoteClaims(q)
}
