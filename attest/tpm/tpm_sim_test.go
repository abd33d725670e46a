//go:build cgo

package tpm_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/tpm"
	"github.com/cocoon-cc/cocoon/attest/tpm/tpmtest"
)

func TestRoundTrip(t *testing.T) {
	initData := sha256.Sum256([]byte("version = \"0.1.0\"\n"))
	wantPCR8, err := tpm.ExpectedInitDataPCR(initData[:])
	if err != nil {
		t.Fatal(err)
	}
	a, v := tpmtest.New(t, tpmtest.WithInitData(initData[:]))
	if a.TEE() != attest.TEETPM || v.TEE() != attest.TEETPM {
		t.Fatalf("TEE() = %q, %q", a.TEE(), v.TEE())
	}
	for _, n := range []int{0, 1, 31, 32, 48, 64, 100} {
		rd := teetest.RandomBytes(t, n)
		_, claims := teetest.RoundTrip(t, a, v, rd)
		want := teetest.Padded(rd, 32)
		if got := claims["report_data"]; got != hex.EncodeToString(want) {
			t.Errorf("report_data = %v, want %x", got, want)
		}
		if got := claims["init_data"]; got != hex.EncodeToString(wantPCR8) {
			t.Errorf("init_data = %v, want PCR8 %x", got, wantPCR8)
		}
		if got := claims["pcr08"]; got != hex.EncodeToString(wantPCR8) {
			t.Errorf("pcr08 = %v", got)
		}
		if claims["ak_trusted"] != true {
			t.Errorf("ak_trusted = %v, want true", claims["ak_trusted"])
		}
		bank := claims["pcrs"].(map[string]any)["sha256"].(map[string]string)
		if len(bank) != 24 {
			t.Errorf("sha256 bank has %d PCRs, want 24", len(bank))
		}
	}
}

func TestExtendRuntimeMeasurement(t *testing.T) {
	ctx := context.Background()
	a, v := tpmtest.New(t, tpmtest.WithPCRs(14, 23))
	m := a.(attest.RuntimeMeasurer)
	digest := sha256.Sum256([]byte("domain operation content"))
	if err := m.ExtendRuntimeMeasurement(ctx, 23, digest[:]); err != nil {
		t.Fatal(err)
	}
	_, claims := teetest.RoundTrip(t, a, v, nil)
	h := sha256.New()
	h.Write(make([]byte, 32))
	h.Write(digest[:])
	if got, want := claims["pcr23"], hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("pcr23 = %v, want %v", got, want)
	}
	if _, ok := claims["init_data"]; ok {
		t.Error("init_data claimed though PCR8 was not quoted")
	}
	for _, tc := range []struct {
		reg    int
		digest []byte
	}{{24, digest[:]}, {-1, digest[:]}, {23, digest[:31]}, {23, make([]byte, 48)}} {
		if err := m.ExtendRuntimeMeasurement(ctx, tc.reg, tc.digest); err == nil {
			t.Errorf("ExtendRuntimeMeasurement(%d, %d bytes) succeeded", tc.reg, len(tc.digest))
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	ctx := context.Background()
	a, v := tpmtest.New(t)
	rd := teetest.RandomBytes(t, 32)
	ev := teetest.Evidence(t, a, rd)
	untrusted, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: nil})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := untrusted.Verify(ctx, ev, rd)
	if err != nil || claims["ak_trusted"] != false {
		t.Fatalf("verifier without TrustedAKs: claims %v, err %v; want ak_trusted=false", claims, err)
	}
	otherAK := mustVerifierTrustingOther(t)
	modify := func(f func(*tpm.Evidence)) json.RawMessage {
		var e tpm.Evidence
		if err := json.Unmarshal(ev, &e); err != nil {
			t.Fatal(err)
		}
		f(&e)
		out, _ := json.Marshal(e)
		return out
	}
	teetest.CheckRejects(t, []teetest.Reject{
		{"wrong report data", v, ev, teetest.RandomBytes(t, 32), "nonce does not match"},
		{"flipped nonce bit in message", v, tpmtest.Tamper(t, ev), rd, "quote signature"},
		{"flipped signature bit", v, modify(func(e *tpm.Evidence) {
			s := []byte(e.TPMQuote.Signature)
			if s[20] == 'A' {
				s[20] = 'B'
			} else {
				s[20] = 'A'
			}
			e.TPMQuote.Signature = string(s)
		}), rd, "quote signature"},
		{"PCR value changed", v, modify(func(e *tpm.Evidence) { e.TPMQuote.PCRs[3] = strings.Repeat("ab", 32) }), rd, "PCR values do not match"},
		{"PCR value dropped", v, modify(func(e *tpm.Evidence) { e.TPMQuote.PCRs = e.TPMQuote.PCRs[:23] }), rd, "lists 23 PCR values"},
		{"untrusted AK", otherAK, ev, rd, "not trusted"},
		{"AK swapped", v, modify(func(e *tpm.Evidence) { e.AKPublic = otherAKPublic(t) }), rd, "not trusted"},
		{"not JSON", v, json.RawMessage(`[`), rd, "decode evidence"},
	})
	// A swapped AK is also refused by a verifier trusting any AK: the
	// signature no longer checks.
	if _, err := untrusted.Verify(ctx, modify(func(e *tpm.Evidence) { e.AKPublic = otherAKPublic(t) }), rd); err == nil || !strings.Contains(err.Error(), "quote signature") {
		t.Fatalf("swapped AK with any-AK verifier: %v", err)
	}
}

func TestEvidenceJSONShape(t *testing.T) {
	a, _ := tpmtest.New(t)
	ev, err := a.Evidence(context.Background(), []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(ev, &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top["tpm_quote"] == nil || top["ak_public"] == nil {
		t.Fatalf("top-level keys: %s", ev)
	}
	var q map[string]json.RawMessage
	if err := json.Unmarshal(top["tpm_quote"], &q); err != nil {
		t.Fatal(err)
	}
	if len(q) != 3 || q["signature"] == nil || q["message"] == nil || q["pcrs"] == nil {
		t.Fatalf("tpm_quote keys: %s", top["tpm_quote"])
	}
	var pcrs []string
	if err := json.Unmarshal(q["pcrs"], &pcrs); err != nil || len(pcrs) != 24 || len(pcrs[0]) != 64 {
		t.Fatalf("pcrs = %s (%v), want 24 hex SHA-256 values", q["pcrs"], err)
	}
	var msg string
	if err := json.Unmarshal(q["message"], &msg); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(msg, "/1RDR4AY") { // TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE
		t.Errorf("message %q is not a base64 TPMS_ATTEST quote", msg)
	}
	var sig string
	if err := json.Unmarshal(q["signature"], &sig); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sig, "ABQACw") { // TPM_ALG_RSASSA, TPM_ALG_SHA256
		t.Errorf("signature %q is not a base64 RSASSA-SHA256 TPMT_SIGNATURE", sig)
	}
}

func BenchmarkEvidenceVerify(b *testing.B) {
	a, v := tpmtest.New(b)
	teetest.BenchmarkRoundTrip(b, a, v, teetest.RandomBytes(b, 32))
}

func TestPersistentAK(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	persisted, err := client.NewCachedKey(sim, tpm2.HandleOwner, client.AKTemplateRSA(), tpm.DefaultAKHandle)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		handle uint32
		ok     bool
	}{{"default handle", 0, true}, {"explicit handle", tpm.DefaultAKHandle, true}, {"missing handle", 0x81010010, false}} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := tpm.NewAttester(tpm.AttesterOptions{TPM: nopCloser{sim}, AKHandle: tc.handle})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := a.Evidence(context.Background(), []byte("n"))
			if !tc.ok {
				if err == nil {
					t.Fatal("Evidence succeeded with a missing AK handle")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			v, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: []crypto.PublicKey{persisted.PublicKey()}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(context.Background(), ev, []byte("n")); err != nil {
				t.Fatalf("evidence is not signed by the persisted AK: %v", err)
			}
			if err := a.(*tpm.Attester).Close(); err != nil {
				t.Fatal(err)
			}
			// Closing the attester must not evict the persisted key.
			if _, err := client.LoadCachedKey(sim, tpm.DefaultAKHandle, client.NullSession{}); err != nil {
				t.Fatalf("persisted AK gone after Close: %v", err)
			}
		})
	}
}

// nopCloser lets several attesters share one simulator.
type nopCloser struct{ io.ReadWriter }

func (nopCloser) Close() error { return nil }
