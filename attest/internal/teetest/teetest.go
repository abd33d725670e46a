// Package teetest holds the checks that the tests of every TEE package
// (attest/snp, attest/tdx, attest/tpm) run against an attester and its
// verifier: random report data, the evidence-then-verify round trip, a
// table of evidence the verifier must refuse, the fuzz target that only
// genuine evidence passes, and the evidence-and-verify benchmark. Each
// TEE's fake hardware stays in its own *test package (snptest, tdxtest,
// tpmtest); this package knows no TEE. For tests only.
package teetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
)

// RandomBytes returns n random bytes.
func RandomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// Padded returns b zero-padded (or truncated) to n bytes, as a TEE report
// holds report data or an init-data digest.
func Padded(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}

// Evidence returns a's evidence for reportData, failing tb on error.
func Evidence(tb testing.TB, a attest.Attester, reportData []byte) json.RawMessage {
	tb.Helper()
	ev, err := a.Evidence(context.Background(), reportData)
	if err != nil {
		tb.Fatalf("Evidence(%d bytes): %v", len(reportData), err)
	}
	return ev
}

// RoundTrip returns a's evidence for reportData and the claims v finds in
// it, failing tb when either step fails.
func RoundTrip(tb testing.TB, a attest.Attester, v attest.Verifier, reportData []byte) (json.RawMessage, map[string]any) {
	tb.Helper()
	ev := Evidence(tb, a, reportData)
	claims, err := v.Verify(context.Background(), ev, reportData)
	if err != nil {
		tb.Fatalf("Verify(%d bytes): %v", len(reportData), err)
	}
	return ev, claims
}

// Reject is evidence that Verifier must refuse for ReportData, with an
// error containing WantErr. It is an alias of an unnamed struct so that
// callers' tables stay one positional line a case (vet's composites check
// asks for keyed fields only on named types of other packages).
type Reject = struct {
	Name       string
	Verifier   attest.Verifier
	Evidence   json.RawMessage
	ReportData []byte
	WantErr    string
}

// CheckRejects runs each case as a subtest.
func CheckRejects(t *testing.T, cases []Reject) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			claims, err := tc.Verifier.Verify(context.Background(), tc.Evidence, tc.ReportData)
			if err == nil {
				t.Fatalf("Verify succeeded with claims %v", claims)
			}
			t.Logf("%s: %v", tc.Name, err)
			if !strings.Contains(err.Error(), tc.WantErr) {
				t.Fatalf("Verify error %q does not contain %q", err, tc.WantErr)
			}
		})
	}
}

// BenchmarkRoundTrip measures one evidence and its verification per
// iteration.
func BenchmarkRoundTrip(b *testing.B, a attest.Attester, v attest.Verifier, reportData []byte) {
	b.Helper()
	ctx := context.Background()
	for b.Loop() {
		ev, err := a.Evidence(ctx, reportData)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, ev, reportData); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerify fuzzes v.Verify with report data "seed", starting from a's
// evidence for it and the extra seeds: whatever verifies must claim that
// report data (64 bytes, zero-padded), so only an encoding of genuine
// signed evidence can pass.
func FuzzVerify(f *testing.F, a attest.Attester, v attest.Verifier, seeds ...string) {
	f.Helper()
	rd := []byte("seed")
	f.Add([]byte(Evidence(f, a, rd)))
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	want := hex.EncodeToString(Padded(rd, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		claims, err := v.Verify(context.Background(), data, rd)
		if err == nil && claims["report_data"] != want {
			t.Fatalf("verified with report_data %v", claims["report_data"])
		}
	})
}
