package server_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
)

// aaelFixture runs the runtime-measurement flow of one TEE: an attester
// measuring image pulls into an AAEL (attest/eventlog), the RCAR handshake
// against the development KBS, and the events in the token.
type aaelFixture struct {
	tee     string
	alg     eventlog.Alg
	initPCR int
	// pair returns an attester reading its AAEL at aaelPath and a verifier
	// for it; reserve asks the verifier to check the AAEL's register even
	// when the evidence carries no log (where the TEE supports it).
	pair func(t *testing.T, aaelPath string, reserve bool) (attest.Attester, attest.Verifier)
	// eventsClaim is the TEE claim listing the event-log entries and
	// index the record index the AAEL entries carry.
	eventsClaim string
	index       float64
	// wantErr maps a refusal case to a substring of the KBS error.
	wantErr map[string]string
}

var aaelPulls = []struct{ image, digest string }{
	{"registry.example/app:1", "sha256:" + strings.Repeat("1f", 32)},
	{"registry.example/sidecar:2", "sha256:" + strings.Repeat("e2", 32)},
}

func aaelPullContent(image, digest string) string {
	return `{"image":"` + image + `","digest":"` + digest + `"}`
}

// aaelEnv is an attester with a measured AAEL and a KBS verifying it.
type aaelEnv struct {
	a   attest.Attester
	log *eventlog.Log
	kbs *env
}

func newAAELEnv(t *testing.T, f aaelFixture, reserve bool) *aaelEnv {
	t.Helper()
	dir := t.TempDir()
	a, v := f.pair(t, filepath.Join(dir, eventlog.FileName), reserve)
	l, err := eventlog.Open(bg, dir, f.alg, f.initPCR, a.(attest.RuntimeMeasurer))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range aaelPulls {
		if err := l.Extend(bg, "github.com/confidential-containers", "PullImage", aaelPullContent(p.image, p.digest), nil); err != nil {
			t.Fatal(err)
		}
	}
	return &aaelEnv{a: a, log: l, kbs: newEnv(t, server.Options{Policy: server.AllowAllPolicy}, v)}
}

func (e *aaelEnv) token(t *testing.T) (string, error) {
	t.Helper()
	c, err := kbs.NewClient(kbs.Config{URL: e.kbs.url(), Attester: e.a, Now: e.kbs.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return c.Token(bg)
}

func (e *aaelEnv) rewriteLog(t *testing.T, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(e.log.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.log.Path(), f(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runAAEL(t *testing.T, f aaelFixture) {
	t.Run("events in token", func(t *testing.T) {
		e := newAAELEnv(t, f, false)
		tok, err := e.token(t)
		if err != nil {
			t.Fatal(err)
		}
		teeClaims, ok := annotated(t, tokenClaims(t, tok))[f.tee].(map[string]any)
		if !ok {
			t.Fatalf("token has no %s claims", f.tee)
		}
		events, ok := teeClaims[f.eventsClaim].([]any)
		if !ok || len(events) != len(aaelPulls) {
			t.Fatalf("%s.%s = %v, want %d events", f.tee, f.eventsClaim, teeClaims[f.eventsClaim], len(aaelPulls))
		}
		for i, p := range aaelPulls {
			ev, _ := events[i].(map[string]any)
			details, _ := ev["details"].(map[string]any)
			data, _ := details["data"].(map[string]any)
			content, _ := data["content"].(map[string]any)
			if ev["index"] != f.index || ev["type_name"] != "EV_EVENT_TAG" || details["unicode_name"] != "AAEL" {
				t.Errorf("event %d: index %v, type %v, details %v", i, ev["index"], ev["type_name"], details)
			}
			if want := "github.com/confidential-containers PullImage " + aaelPullContent(p.image, p.digest); details["string"] != want {
				t.Errorf("event %d: string %v, want %q", i, details["string"], want)
			}
			if data["domain"] != "github.com/confidential-containers" || data["operation"] != "PullImage" {
				t.Errorf("event %d: domain %v, operation %v", i, data["domain"], data["operation"])
			}
			if content["image"] != p.image || content["digest"] != p.digest {
				t.Errorf("event %d: content %v", i, data["content"])
			}
		}
	})

	// firstRecordEnd returns the end of the first record of a log of
	// single-digest records.
	firstRecordEnd := func(t *testing.T, b []byte) int {
		t.Helper()
		hdr := 12 + 2 + f.alg.Size() // index, type, count, alg, digest
		end := hdr + 4 + int(binary.LittleEndian.Uint32(b[hdr:]))
		if end >= len(b) {
			t.Fatalf("log of %d bytes has one record", len(b))
		}
		return end
	}
	tests := []struct {
		name    string
		reserve bool
		mangle  func(t *testing.T, b []byte) []byte
	}{
		{"content changed after extend", false, func(t *testing.T, b []byte) []byte {
			out := bytes.Replace(b, []byte("registry.example/app:1"), []byte("registry.example/bad:1"), 1)
			if bytes.Equal(out, b) {
				t.Fatal("content not found in the log")
			}
			return out
		}},
		{"last record truncated", false, func(t *testing.T, b []byte) []byte { return b[:firstRecordEnd(t, b)] }},
		{"record cut mid-way", false, func(t *testing.T, b []byte) []byte { return b[:len(b)-5] }},
		{"log emptied", true, func(*testing.T, []byte) []byte { return []byte{} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantErr, ok := f.wantErr[tc.name]
			if !ok {
				t.Fatalf("fixture has no expected error for %q", tc.name)
			}
			e := newAAELEnv(t, f, tc.reserve)
			if _, err := e.token(t); err != nil {
				t.Fatalf("untouched log: %v", err)
			}
			e.rewriteLog(t, func(b []byte) []byte { return tc.mangle(t, b) })
			tok, err := e.token(t)
			if err == nil {
				t.Fatalf("attestation succeeded: %v", annotated(t, tokenClaims(t, tok))[f.tee])
			}
			if v := kbsVariant(err); v != server.VariantAttestation || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("err = %v (variant %q), want %s with %q", err, v, server.VariantAttestation, wantErr)
			}
		})
	}
}

// TestTDXAAEL: tdxtest emulates the RTMRs (tdxtest.WithAAELPath) and puts
// them in its quotes; the tdx attester sends cc_eventlog = Spec ID header
// + AAEL + end flag and the verifier replays it against RTMR0..3. PCR 17
// maps to RTMR3, MR index 4.
func TestTDXAAEL(t *testing.T) {
	runAAEL(t, aaelFixture{
		tee:     attest.TEETDX,
		alg:     eventlog.SHA384,
		initPCR: eventlog.DefaultInitPCR,
		pair: func(t *testing.T, aaelPath string, _ bool) (attest.Attester, attest.Verifier) {
			return tdxtest.New(t, tdxtest.WithAAELPath(aaelPath))
		},
		eventsClaim: "uefi_event_logs",
		index:       4,
		wantErr: map[string]string{
			"content changed after extend": "AAEL data does not match its digest",
			"last record truncated":        "does not replay to RTMR3",
			"record cut mid-way":           "cc_eventlog record",
			"log emptied":                  "does not replay to RTMR3",
		},
	})
}
