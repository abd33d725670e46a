package tdx_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/tdx"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
)

func TestRoundTrip(t *testing.T) {
	initData := teetest.RandomBytes(t, 32) // a sha256 init-data digest
	a, v := tdxtest.New(t, tdxtest.WithMRConfigID(initData))
	if a.TEE() != attest.TEETDX || v.TEE() != attest.TEETDX {
		t.Fatalf("TEE() = %q, %q", a.TEE(), v.TEE())
	}
	for _, n := range []int{0, 1, 32, 48, 64} {
		rd := teetest.RandomBytes(t, n)
		_, claims := teetest.RoundTrip(t, a, v, rd)
		if got, want := claims["report_data"], hex.EncodeToString(teetest.Padded(rd, 64)); got != want {
			t.Errorf("report_data = %v, want %v", got, want)
		}
		if got, want := claims["init_data"], hex.EncodeToString(teetest.Padded(initData, 48)); got != want {
			t.Errorf("init_data = %v, want %v", got, want)
		}
		body := claims["quote"].(map[string]any)["body"].(map[string]any)
		for _, k := range []string{"mr_td", "rtmr_0", "rtmr_1", "rtmr_2", "rtmr_3", "xfam", "tcb_svn"} {
			if _, ok := body[k].(string); !ok {
				t.Errorf("quote.body.%s missing", k)
			}
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	ctx := context.Background()
	a, v := tdxtest.New(t)
	rd := teetest.RandomBytes(t, 64)
	ev := teetest.Evidence(t, a, rd)
	_, untrusted := tdxtest.New(t, tdxtest.WithUntrustedRoot())
	intel, err := tdx.NewVerifier(tdx.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Same fake chain, checked two years on, when it has expired.
	chain, err := tdxtest.NewChain()
	if err != nil {
		t.Fatal(err)
	}
	chainAttester, err := tdx.NewAttester(tdx.AttesterOptions{QuoteProvider: &tdxtest.QuoteProvider{Chain: chain}, EventLog: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	chainEvidence, err := chainAttester.Evidence(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	current, err := tdx.NewVerifier(tdx.VerifierOptions{TrustedRoots: chain.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := current.Verify(ctx, chainEvidence, rd); err == nil || !strings.Contains(err.Error(), "cc_eventlog") {
		// An empty cc_eventlog has no Spec ID header and must be refused.
		t.Fatalf("empty cc_eventlog: %v", err)
	}
	chainAttester, err = tdx.NewAttester(tdx.AttesterOptions{QuoteProvider: &tdxtest.QuoteProvider{Chain: chain}, CCELPath: "/nonexistent", AAELPath: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if chainEvidence, err = chainAttester.Evidence(ctx, rd); err != nil {
		t.Fatal(err)
	}
	if _, err := current.Verify(ctx, chainEvidence, rd); err != nil {
		t.Fatalf("evidence under a hand-built chain: %v", err)
	}
	expired, err := tdx.NewVerifier(tdx.VerifierOptions{
		TrustedRoots: chain.Pool(),
		Now:          func() time.Time { return time.Now().Add(2 * 365 * 24 * time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	teetest.CheckRejects(t, []teetest.Reject{
		{"wrong report data", v, ev, teetest.RandomBytes(t, 64), "REPORT_DATA does not match"},
		{"flipped MR_TD bit", v, tdxtest.Tamper(t, ev), rd, "verify quote"},
		{"flipped REPORT_DATA bit", v, tdxtest.ModifyQuote(t, ev, func(q []byte) { q[48+520] ^= 0x10 }), rd, "verify quote"},
		{"flipped header bit", v, tdxtest.ModifyQuote(t, ev, func(q []byte) { q[30] ^= 1 }), rd, "verify quote"},
		{"flipped signature bit", v, tdxtest.ModifyQuote(t, ev, func(q []byte) { q[48+584+4] ^= 1 }), rd, "verify quote"},
		{"flipped QE report bit", v, tdxtest.ModifyQuote(t, ev, func(q []byte) { q[48+584+4+128+6+100] ^= 1 }), rd, "verify quote"},
		{"untrusted root", untrusted, ev, rd, "verify quote"},
		{"Intel root", intel, ev, rd, "verify quote"},
		{"expired chain", expired, chainEvidence, rd, "certificate has expired"},
		{"truncated quote", v, truncateQuote(t, ev, 600), rd, "parse quote"},
		{"expected report data too long", v, ev, make([]byte, 65), "no more than 64 bytes"},
		{"not JSON", v, json.RawMessage(`{"quote":`), rd, "decode evidence"},
		{"quote not base64", v, json.RawMessage(`{"cc_eventlog":null,"quote":"!!"}`), rd, "decode quote"},
		{"cc_eventlog not base64", v, json.RawMessage(`{"cc_eventlog":"!!","quote":""}`), rd, "decode cc_eventlog"},
	})
}

func truncateQuote(t *testing.T, ev json.RawMessage, n int) json.RawMessage {
	t.Helper()
	var e tdx.Evidence
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(e.Quote)
	if err != nil {
		t.Fatal(err)
	}
	e.Quote = base64.StdEncoding.EncodeToString(raw[:n])
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReportDataTooLong(t *testing.T) {
	a, _ := tdxtest.New(t)
	_, err := a.Evidence(context.Background(), make([]byte, 65))
	if !errors.Is(err, tdx.ErrReportDataTooLong) || err.Error() != "TDX Attester: Report data must be no more than 64 bytes" {
		t.Fatalf("Evidence(65 bytes) error = %v", err)
	}
}

func TestEvidenceJSONShape(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  []byte
		want string
	}{
		{"no event log", nil, "null"},
		{"event log", []byte{1, 2, 3}, `"AQID"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []tdxtest.Option
			if tc.log != nil {
				opts = append(opts, tdxtest.WithEventLog(tc.log))
			}
			a, _ := tdxtest.New(t, opts...)
			ev, err := a.Evidence(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var top map[string]json.RawMessage
			if err := json.Unmarshal(ev, &top); err != nil {
				t.Fatal(err)
			}
			if len(top) != 2 || string(top["cc_eventlog"]) != tc.want {
				t.Fatalf("evidence %s: want cc_eventlog %s and quote", ev, tc.want)
			}
			var q string
			if err := json.Unmarshal(top["quote"], &q); err != nil {
				t.Fatal(err)
			}
			raw, err := base64.StdEncoding.DecodeString(q)
			if err != nil || len(raw) < 632 || raw[0] != 4 || raw[4] != 0x81 {
				t.Fatalf("quote is not a standard-base64 v4 TDX quote (err %v)", err)
			}
		})
	}
}

// The claims of a real TDX quote from Trustee's test data must match the
// quote and attribute claims Trustee's verifier produced for it.
func TestTrusteeClaims(t *testing.T) {
	raw, err := os.ReadFile("testdata/trustee-tdx_quote_4.dat")
	if err != nil {
		t.Fatal(err)
	}
	expJSON, err := os.ReadFile("testdata/trustee-parse_tdx_claims_expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var expected map[string]any
	if err := json.Unmarshal(expJSON, &expected); err != nil {
		t.Fatal(err)
	}
	got, err := tdx.ClaimsFromQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	gotJSON, _ := json.Marshal(got)
	var gotMap map[string]any
	if err := json.Unmarshal(gotJSON, &gotMap); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"quote", "td_attributes", "report_data", "init_data"} {
		if !reflect.DeepEqual(gotMap[k], expected[k]) {
			t.Errorf("claim %s:\n got %v\nwant %v", k, gotMap[k], expected[k])
		}
	}
}

// go-tdx-guest's sample quote is signed under Intel's real chain: it must
// verify with the default (embedded Intel root) verifier for its own
// report data, and fail for any other.
func TestIntelSampleQuote(t *testing.T) {
	ev, _ := json.Marshal(tdx.Evidence{Quote: base64.StdEncoding.EncodeToString(testdata.RawQuote)})
	q, _, err := tdx.ParseEvidence(ev)
	if err != nil {
		t.Fatal(err)
	}
	rd := q.GetTdQuoteBody().GetReportData()
	// The sample's PCK certificate is valid in 2023 and 2024.
	v, err := tdx.NewVerifier(tdx.VerifierOptions{Now: func() time.Time { return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), ev, rd); err != nil {
		t.Fatalf("Verify(sample quote): %v", err)
	}
	if _, err := v.Verify(context.Background(), tdxtest.Tamper(t, ev), rd); err == nil {
		t.Fatal("tampered sample quote verified")
	}
}

func TestRTMRIndex(t *testing.T) {
	tests := []struct{ pcr, rtmr int }{
		{0, 3}, {1, 0}, {7, 0}, {2, 1}, {6, 1}, {8, 2}, {15, 2}, {16, 3}, {17, 3}, {23, 3},
	}
	for _, tc := range tests {
		got, err := tdx.RTMRIndex(tc.pcr)
		if err != nil || got != tc.rtmr {
			t.Errorf("RTMRIndex(%d) = %d, %v; want %d", tc.pcr, got, err, tc.rtmr)
		}
	}
	if _, err := tdx.RTMRIndex(-1); err == nil {
		t.Error("RTMRIndex(-1) succeeded")
	}
}

func TestExtendRuntimeMeasurement(t *testing.T) {
	dir := t.TempDir()
	for i := range 4 {
		if err := os.WriteFile(filepath.Join(dir, "rtmr"+string(rune('0'+i))+":sha384"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := tdxtest.New(t, tdxtest.WithMeasurementsDir(dir))
	m := a.(attest.RuntimeMeasurer)
	digest := teetest.RandomBytes(t, 32)
	if err := m.ExtendRuntimeMeasurement(context.Background(), 17, digest); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "rtmr3:sha384"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, teetest.Padded(digest, 48)) {
		t.Errorf("rtmr3 got %x, want the digest zero-padded to 48 bytes", got)
	}
	for _, bad := range [][]byte{nil, make([]byte, 49)} {
		if err := m.ExtendRuntimeMeasurement(context.Background(), 8, bad); err == nil {
			t.Errorf("extend with %d-byte digest succeeded", len(bad))
		}
	}
	if err := os.Remove(filepath.Join(dir, "rtmr0:sha384")); err != nil {
		t.Fatal(err)
	}
	if err := m.ExtendRuntimeMeasurement(context.Background(), 1, digest); err == nil {
		t.Error("extend succeeded though rtmr0:sha384 was removed")
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v is not ErrNotExist", err)
	}
}

func FuzzVerifyEvidence(f *testing.F) {
	a, v := tdxtest.New(f)
	teetest.FuzzVerify(f, a, v, `{"cc_eventlog":"AQID","quote":"BAACAIEAAAA="}`)
}

func FuzzParseQuote(f *testing.F) {
	f.Add(testdata.RawQuote)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, _ := json.Marshal(tdx.Evidence{Quote: base64.StdEncoding.EncodeToString(raw)})
		if _, _, err := tdx.ParseEvidence(ev); err != nil {
			return
		}
		if _, err := tdx.ClaimsFromQuote(raw); err != nil {
			t.Fatalf("claims of a parsed quote: %v", err)
		}
	})
}

func BenchmarkEvidenceVerify(b *testing.B) {
	a, v := tdxtest.New(b)
	teetest.BenchmarkRoundTrip(b, a, v, teetest.RandomBytes(b, 64))
}

func TestEventLogReplay(t *testing.T) {
	ctx := context.Background()
	log, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud.bin")
	if err != nil {
		t.Fatal(err)
	}
	a, v := tdxtest.New(t, tdxtest.WithEventLog(log))
	rd := teetest.RandomBytes(t, 64)
	ev, claims := teetest.RoundTrip(t, a, v, rd)
	logs, ok := claims["uefi_event_logs"].([]any)
	if !ok || len(logs) != 87 {
		t.Fatalf("uefi_event_logs has %d entries, want 87", len(logs))
	}
	// Change one AAEL byte near the end: the log no longer replays.
	var e tdx.Evidence
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	tampered := append([]byte(nil), log...)
	tampered[len(tampered)-12] ^= 1
	s := base64.StdEncoding.EncodeToString(tampered)
	e.CCEventLog = &s
	bad, _ := json.Marshal(e)
	if _, err := v.Verify(ctx, bad, rd); err == nil || !strings.Contains(err.Error(), "AAEL data does not match its digest") {
		t.Fatalf("tampered AAEL text: err = %v, want a digest mismatch", err)
	}
	// Change one byte of the first event's digest: the log no longer
	// replays to the quoted RTMRs.
	tampered = append([]byte(nil), log...)
	events, err := tdx.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	first := events[0].Digests[0x000C]
	idx := bytes.Index(tampered, first)
	if idx < 0 {
		t.Fatal("first digest not found in the log")
	}
	tampered[idx] ^= 1
	s = base64.StdEncoding.EncodeToString(tampered)
	e.CCEventLog = &s
	bad, _ = json.Marshal(e)
	if _, err := v.Verify(ctx, bad, rd); err == nil || !strings.Contains(err.Error(), "does not replay to RTMR0") {
		t.Fatalf("tampered digest: err = %v, want an RTMR0 replay mismatch", err)
	}
	// Evidence without an event log still verifies, without the claim.
	e.CCEventLog = nil
	none, _ := json.Marshal(e)
	claims, err = v.Verify(ctx, none, rd)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := claims["uefi_event_logs"]; ok {
		t.Error("uefi_event_logs claimed without an event log")
	}
}

func TestRealQuoteProviderWithoutDevice(t *testing.T) {
	if tdx.Available() {
		t.Skip("this machine is a TDX guest")
	}
	a, err := tdx.NewAttester(tdx.AttesterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Evidence(context.Background(), []byte("x")); err == nil || !strings.Contains(err.Error(), "tdx: get quote") {
		t.Fatalf("Evidence without configfs-tsm: %v", err)
	}
}

// Without collateral the quote verifies but its TCB level is not known,
// and the claims say so: a KBS must not take it for an up-to-date TCB.
func TestTCBStatusWithoutCollateral(t *testing.T) {
	a, v := tdxtest.New(t)
	_, claims := teetest.RoundTrip(t, a, v, teetest.RandomBytes(t, 48))
	if claims["tcb_status"] != tdx.TCBStatusUnknown {
		t.Fatalf("tcb_status = %v, want %q", claims["tcb_status"], tdx.TCBStatusUnknown)
	}
	if _, ok := claims["advisory_ids"]; ok {
		t.Fatal("advisory_ids claimed without collateral")
	}
}

type failingGetter struct{ calls int }

func (g *failingGetter) Get(url string) (map[string][]string, []byte, error) {
	g.calls++
	return nil, nil, errors.New("no network in this test")
}

// With GetCollateral, collateral that cannot be had fails the quote.
func TestCollateralFailsClosed(t *testing.T) {
	ev, _ := json.Marshal(tdx.Evidence{Quote: base64.StdEncoding.EncodeToString(testdata.RawQuote)})
	q, _, err := tdx.ParseEvidence(ev)
	if err != nil {
		t.Fatal(err)
	}
	g := &failingGetter{}
	v, err := tdx.NewVerifier(tdx.VerifierOptions{
		Now:           func() time.Time { return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) },
		GetCollateral: true,
		Getter:        g,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), ev, q.GetTdQuoteBody().GetReportData()); err == nil {
		t.Fatal("quote verified without its collateral")
	}
	if g.calls == 0 {
		t.Fatal("collateral was never fetched")
	}
}
