//go:build cgo

package tpm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/tpm"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

type pullEntry struct{ image, digest string }

func (p pullEntry) content() string {
	return `{"image":"` + p.image + `","digest":"` + p.digest + `"}`
}

var pulls = []pullEntry{
	{"docker.io/library/busybox:latest", "sha256:" + strings.Repeat("ab", 32)},
	{"quay.io/x/y:1", "sha256:" + strings.Repeat("cd", 32)},
}

// aaelPCR is the PCR the tests measure into. Upstream's init_pcr 17 is a
// DRTM PCR that only locality 4 may extend: the simulator (like a TPM
// driven by the Linux driver at locality 0) refuses it, see
// TestAAELInitPCR17. PCR 23 is the application PCR any locality extends.
const aaelPCR = 23

// aaelSetup returns a simulator attester writing its AAEL in a temp dir,
// the log, and the verifier.
func aaelSetup(t *testing.T, opts ...tpmtest.Option) (attest.Attester, attest.Verifier, *eventlog.Log) {
	t.Helper()
	dir := t.TempDir()
	a, v := tpmtest.New(t, append(opts, tpmtest.WithAAELPath(filepath.Join(dir, eventlog.FileName)))...)
	l, err := eventlog.Open(context.Background(), dir, eventlog.SHA256, aaelPCR, a.(attest.RuntimeMeasurer))
	if err != nil {
		t.Fatal(err)
	}
	return a, v, l
}

func extendPulls(t *testing.T, l *eventlog.Log) {
	t.Helper()
	for _, p := range pulls {
		if err := l.Extend(context.Background(), "github.com/confidential-containers", "PullImage", p.content(), nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAAELRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []tpmtest.Option
	}{
		{"all PCRs", nil},
		// The attester adds the PCR the log names to a selection lacking it.
		{"selection without PCR23", []tpmtest.Option{tpmtest.WithPCRs(8)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, v, l := aaelSetup(t, tc.opts...)
			// An empty log sends no aa_eventlog.
			ev := teetest.Evidence(t, a, []byte("n"))
			if bytes.Contains(ev, []byte("aa_eventlog")) {
				t.Fatalf("empty AAEL sent: %s", ev)
			}
			extendPulls(t, l)
			ev = teetest.Evidence(t, a, []byte("n"))
			var e tpm.Evidence
			if err := json.Unmarshal(ev, &e); err != nil {
				t.Fatal(err)
			}
			logBytes, err := l.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if e.AAEventLog != base64.StdEncoding.EncodeToString(logBytes) {
				t.Fatal("aa_eventlog is not base64 of the AAEL file")
			}
			claims, err := v.Verify(ctx, ev, []byte("n"))
			if err != nil {
				t.Fatal(err)
			}
			// PCR23 = SHA-256 chain of the entries' digests from zero.
			pcr := make([]byte, 32)
			for _, p := range pulls {
				e, _ := eventlog.NewEntry("github.com/confidential-containers", "PullImage", p.content())
				d, _ := e.Digest(eventlog.SHA256)
				h := sha256.Sum256(append(pcr, d...))
				pcr = h[:]
			}
			if got := claims["pcr23"]; got != hex.EncodeToString(pcr) {
				t.Errorf("pcr23 = %v, want %x", got, pcr)
			}
			// Round-trip through JSON as the token does.
			b, _ := json.Marshal(claims)
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			checkAAELClaims(t, m)
		})
	}
}

// checkAAELClaims asserts that tpm claims (decoded from JSON) list pulls.
func checkAAELClaims(t *testing.T, claims map[string]any) {
	t.Helper()
	list, ok := claims["aa_eventlog"].([]any)
	if !ok || len(list) != len(pulls) {
		t.Fatalf("aa_eventlog claims = %v, want %d entries", claims["aa_eventlog"], len(pulls))
	}
	for i, p := range pulls {
		e := list[i].(map[string]any)
		if e["index"] != float64(aaelPCR) || e["type_name"] != "EV_EVENT_TAG" || e["digest_matches_event"] != true {
			t.Errorf("entry %d: %v", i, e)
		}
		details, _ := e["details"].(map[string]any)
		if details["unicode_name"] != "AAEL" || details["string"] != "github.com/confidential-containers PullImage "+p.content() {
			t.Errorf("entry %d details: %v", i, details)
		}
		data, _ := details["data"].(map[string]any)
		content, _ := data["content"].(map[string]any)
		if data["domain"] != "github.com/confidential-containers" || data["operation"] != "PullImage" ||
			content["image"] != p.image || content["digest"] != p.digest {
			t.Errorf("entry %d data: %v", i, data)
		}
	}
}

func TestAAELRejects(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		opts    []tpmtest.Option
		mangle  func(t *testing.T, l *eventlog.Log, a attest.Attester)
		wantErr string
	}{
		{"content changed", nil, func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			rewrite(t, l, func(b []byte) []byte {
				return bytes.Replace(b, []byte("busybox"), []byte("evilbox"), 1)
			})
		}, "does not match its digest"},
		{"record and digest replaced", nil, func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			e, _ := eventlog.NewEntry("github.com/confidential-containers", "PullImage", `{"image":"evil"}`)
			rec, _, _ := e.Record(aaelPCR, eventlog.SHA256)
			rewrite(t, l, func(b []byte) []byte { return append(rec, b[len(firstRecord(t, b)):]...) })
		}, "does not replay to PCR 23"},
		{"last record truncated", nil, func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			rewrite(t, l, func(b []byte) []byte { return firstRecord(t, b) })
		}, "does not replay to PCR 23"},
		{"records swapped", nil, func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			rewrite(t, l, func(b []byte) []byte {
				first := firstRecord(t, b)
				return append(bytes.Clone(b[len(first):]), first...)
			})
		}, "does not replay to PCR 23"},
		{"torn record", nil, func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			rewrite(t, l, func(b []byte) []byte { return b[:len(b)-3] })
		}, "parse aa_eventlog"},
		{name: "log emptied, PCR reserved", opts: []tpmtest.Option{tpmtest.WithAAELPCRs(aaelPCR)}, mangle: func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			rewrite(t, l, func([]byte) []byte { return nil })
		}, wantErr: "does not replay to PCR 23"},
		{name: "log removed, PCR reserved", opts: []tpmtest.Option{tpmtest.WithAAELPCRs(aaelPCR)}, mangle: func(t *testing.T, l *eventlog.Log, _ attest.Attester) {
			if err := os.Remove(l.Path()); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "does not replay to PCR 23"},
		{"extra register extend", nil, func(t *testing.T, _ *eventlog.Log, a attest.Attester) {
			d := sha256.Sum256([]byte("unlogged"))
			if err := a.(attest.RuntimeMeasurer).ExtendRuntimeMeasurement(ctx, aaelPCR, d[:]); err != nil {
				t.Fatal(err)
			}
		}, "does not replay to PCR 23"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, v, l := aaelSetup(t, tc.opts...)
			extendPulls(t, l)
			if _, err := v.Verify(ctx, teetest.Evidence(t, a, []byte("n")), []byte("n")); err != nil {
				t.Fatalf("before mangling: %v", err)
			}
			tc.mangle(t, l, a)
			claims, err := v.Verify(ctx, teetest.Evidence(t, a, []byte("n")), []byte("n"))
			if err == nil {
				t.Fatalf("Verify succeeded: %v", claims["aa_eventlog"])
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

func rewrite(t *testing.T, l *eventlog.Log, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(l.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Path(), f(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// firstRecord returns the first AAEL record of b (SHA-256 records:
// 12-byte header, 2-byte alg, 32-byte digest, u32 size, data).
func firstRecord(t *testing.T, b []byte) []byte {
	t.Helper()
	const hdr = 12 + 2 + 32
	if len(b) < hdr+4 {
		t.Fatalf("log of %d bytes has no record", len(b))
	}
	n := int(b[hdr]) | int(b[hdr+1])<<8 | int(b[hdr+2])<<16 | int(b[hdr+3])<<24
	return bytes.Clone(b[:hdr+4+n])
}

// TestAAELEmptiedUnreserved pins down the limit of the default model:
// without AAELPCRs, evidence without a log checks no PCR against it, so
// a log removed after extends still verifies, with no aa_eventlog claim.
func TestAAELEmptiedUnreserved(t *testing.T) {
	a, v, l := aaelSetup(t)
	extendPulls(t, l)
	if err := os.Remove(l.Path()); err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(context.Background(), teetest.Evidence(t, a, []byte("n")), []byte("n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := claims["aa_eventlog"]; ok {
		t.Fatalf("aa_eventlog claimed without a log: %v", claims["aa_eventlog"])
	}
}

func TestRuntimeMeasurement(t *testing.T) {
	ctx := context.Background()
	a, _ := tpmtest.New(t)
	r := a.(eventlog.RegisterReader)
	m := a.(attest.RuntimeMeasurer)
	before, err := r.RuntimeMeasurement(ctx, 23)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if err := m.ExtendRuntimeMeasurement(ctx, 23, d[:]); err != nil {
		t.Fatal(err)
	}
	after, err := r.RuntimeMeasurement(ctx, 23)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(bytes.Clone(before), d[:]...))
	if !bytes.Equal(after, want[:]) {
		t.Fatalf("PCR23 after extend = %x, want %x", after, want)
	}
	for _, reg := range []int{-1, 24} {
		if _, err := r.RuntimeMeasurement(ctx, reg); err == nil {
			t.Errorf("RuntimeMeasurement(%d) succeeded", reg)
		}
	}
}

// TestAAELInitPCR17 pins down why the tests use PCR 23: PCR 17 resets to
// all ones and locality 0 may not extend it, so an AAEL on init_pcr 17
// fails to extend and must leave neither a record nor a write-ahead file.
func TestAAELInitPCR17(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, _ := tpmtest.New(t)
	pcr17, err := a.(eventlog.RegisterReader).RuntimeMeasurement(ctx, 17)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pcr17, bytes.Repeat([]byte{0xFF}, 32)) {
		t.Errorf("PCR17 reset value = %x, want all ones", pcr17)
	}
	l, err := eventlog.Open(ctx, dir, eventlog.SHA256, eventlog.DefaultInitPCR, a.(attest.RuntimeMeasurer))
	if err != nil {
		t.Fatal(err)
	}
	err = l.Extend(ctx, "github.com/confidential-containers", "PullImage", pulls[0].content(), nil)
	if err == nil || !strings.Contains(err.Error(), "locality") {
		t.Fatalf("Extend on PCR 17 = %v, want a locality error", err)
	}
	if b, _ := l.Bytes(); len(b) != 0 {
		t.Errorf("failed extend left %d bytes in the log", len(b))
	}
	if _, err := os.Stat(filepath.Join(dir, eventlog.WALFileName)); err == nil {
		t.Error("failed extend left a write-ahead record")
	}
}
