package snp_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/snp/snptest"
)

func TestRoundTrip(t *testing.T) {
	hostData := teetest.RandomBytes(t, 32)
	for _, version := range []uint32{3, 5} {
		a, v := snptest.New(t, snptest.WithHostData(hostData), snptest.WithReportVersion(version))
		for _, n := range []int{0, 1, 32, 48, 64} {
			t.Run("", func(t *testing.T) {
				rd := teetest.RandomBytes(t, n)
				_, claims := teetest.RoundTrip(t, a, v, rd)
				if got, want := claims["report_data"], hex.EncodeToString(teetest.Padded(rd, 64)); got != want {
					t.Errorf("report_data = %v, want %v", got, want)
				}
				if got, want := claims["init_data"], hex.EncodeToString(hostData); got != want {
					t.Errorf("init_data = %v, want %v", got, want)
				}
				if got := claims["version"]; got != version {
					t.Errorf("version = %v, want %d", got, version)
				}
				if a.TEE() != attest.TEESNP || v.TEE() != attest.TEESNP {
					t.Errorf("TEE() = %q, %q", a.TEE(), v.TEE())
				}
			})
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	a, v := snptest.New(t)
	rd := teetest.RandomBytes(t, 48)
	ev := teetest.Evidence(t, a, rd)
	_, untrusted := snptest.New(t, snptest.WithUntrustedRoot())
	amdRoots, err := snp.NewVerifier(snp.VerifierOptions{DisableCertFetching: true})
	if err != nil {
		t.Fatal(err)
	}
	other := teetest.RandomBytes(t, 48)
	teetest.CheckRejects(t, []teetest.Reject{
		{"wrong report data", v, ev, other, "REPORT_DATA does not match"},
		{"report data with trailing byte", v, ev, append(append([]byte(nil), rd...), 1), "REPORT_DATA does not match"},
		{"flipped measurement bit", v, snptest.Tamper(t, ev), rd, "verify attestation report"},
		{"flipped report data bit", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.AttestationReport.ReportData[63] ^= 0x80 }), rd, "verify attestation report"},
		{"flipped host data bit", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.AttestationReport.HostData[5] ^= 4 }), rd, "verify attestation report"},
		{"flipped policy bit", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.AttestationReport.Policy ^= 1 << 16 }), rd, "verify attestation report"},
		{"flipped signature bit", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.AttestationReport.Signature.R[0] ^= 1 }), rd, "verify attestation report"},
		{"untrusted root", untrusted, ev, rd, "verify attestation report"},
		{"real AMD roots", amdRoots, ev, rd, "verify attestation report"},
		{"no certificate chain", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.CertChain = nil }), rd, "verify attestation report"},
		{"short measurement", v, snptest.Modify(t, ev, func(e *snp.Evidence) { e.AttestationReport.Measurement = e.AttestationReport.Measurement[:47] }), rd, "measurement is 47 bytes"},
		{"expected report data too long", v, ev, make([]byte, 65), "no more than 64 bytes"},
		{"not JSON", v, json.RawMessage(`{"attestation_report":`), rd, "decode evidence"},
		{"byte out of range", v, json.RawMessage(strings.Replace(string(ev), `"report_data":[`, `"report_data":[256,`, 1)), rd, "decode evidence"},
	})
}

func TestReportDataTooLong(t *testing.T) {
	a, _ := snptest.New(t)
	_, err := a.Evidence(context.Background(), make([]byte, 65))
	if !errors.Is(err, snp.ErrReportDataTooLong) {
		t.Fatalf("Evidence(65 bytes) error = %v, want ErrReportDataTooLong", err)
	}
}

// The upstream attester serialises sev 6.x's AttestationReport with serde:
// the key order is the struct's field order, byte arrays are arrays of
// numbers and absent version-dependent fields are null.
func TestEvidenceJSONShape(t *testing.T) {
	a, _ := snptest.New(t)
	ev, err := a.Evidence(context.Background(), []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(ev, &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top["attestation_report"] == nil || top["cert_chain"] == nil {
		t.Fatalf("top-level keys = %v, want attestation_report and cert_chain", keys(top))
	}
	wantOrder := []string{"version", "guest_svn", "policy", "family_id", "image_id", "vmpl", "sig_algo",
		"current_tcb", "plat_info", "key_info", "report_data", "measurement", "host_data", "id_key_digest",
		"author_key_digest", "report_id", "report_id_ma", "reported_tcb", "cpuid_fam_id", "cpuid_mod_id",
		"cpuid_step", "chip_id", "committed_tcb", "current", "committed", "launch_tcb", "launch_mit_vector",
		"current_mit_vector", "signature"}
	if got := objectKeys(t, top["attestation_report"]); strings.Join(got, ",") != strings.Join(wantOrder, ",") {
		t.Errorf("report keys =\n%v\nwant\n%v", got, wantOrder)
	}
	var report map[string]json.RawMessage
	if err := json.Unmarshal(top["attestation_report"], &report); err != nil {
		t.Fatal(err)
	}
	var rd []int
	if err := json.Unmarshal(report["report_data"], &rd); err != nil || len(rd) != 64 || rd[0] != 'n' {
		t.Errorf("report_data = %s, want an array of 64 numbers starting with 'n' (err %v)", report["report_data"], err)
	}
	if got := string(report["launch_mit_vector"]); got != "null" {
		t.Errorf("launch_mit_vector of a version 3 report = %s, want null", got)
	}
	if got := objectKeys(t, report["current_tcb"]); strings.Join(got, ",") != "fmc,bootloader,tee,snp,microcode" {
		t.Errorf("tcb keys = %v", got)
	}
	if got := objectKeys(t, report["current"]); strings.Join(got, ",") != "major,minor,build" {
		t.Errorf("version keys = %v", got)
	}
	if got := objectKeys(t, report["signature"]); strings.Join(got, ",") != "r,s" {
		t.Errorf("signature keys = %v", got)
	}
	var chain []map[string]json.RawMessage
	if err := json.Unmarshal(top["cert_chain"], &chain); err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, e := range chain {
		if len(e) != 2 || e["data"] == nil {
			t.Errorf("cert entry keys = %v, want cert_type and data", keys(e))
		}
		var name string
		if json.Unmarshal(e["cert_type"], &name) == nil {
			types[name] = true
		}
	}
	for _, want := range []string{"ARK", "ASK", "VCEK"} {
		if !types[want] {
			t.Errorf("cert_chain lacks %s (has %v)", want, types)
		}
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func objectKeys(t *testing.T, obj json.RawMessage) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(obj))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", obj)
	}
	var out []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestCertTypeJSON(t *testing.T) {
	tests := []struct {
		json string
		want string
	}{
		{`"ARK"`, "ARK"}, {`"ASK"`, "ASK"}, {`"VCEK"`, "VCEK"}, {`"VLEK"`, "VLEK"}, {`"CRL"`, "CRL"}, {`"Empty"`, "Empty"},
		{`{"OTHER":"ecae0c0f-9502-43b1-afa2-0ae2e0d565b6"}`, "OTHER"},
	}
	for _, tc := range tests {
		var c snp.CertType
		if err := json.Unmarshal([]byte(tc.json), &c); err != nil {
			t.Fatalf("Unmarshal(%s): %v", tc.json, err)
		}
		if c.Name != tc.want {
			t.Errorf("Unmarshal(%s).Name = %q, want %q", tc.json, c.Name, tc.want)
		}
		out, err := json.Marshal(c)
		if err != nil || string(out) != tc.json {
			t.Errorf("Marshal(%s) = %s, %v", tc.json, out, err)
		}
	}
	for _, bad := range []string{`"ark"`, `{"OTHER":"x"}`, `{"OTHER":"ecae0c0f-9502-43b1-afa2-0ae2e0d565b6","X":"1"}`, `3`} {
		var c snp.CertType
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
}

// A real Milan report and VCEK from Trustee's test data: the report must
// survive raw -> JSON -> raw byte for byte and verify against AMD's real
// (embedded) roots.
func TestTrusteeMilanReport(t *testing.T) {
	for _, tc := range []struct {
		report, cert, certType string
		verify                 bool // go-sev-guest embeds no ASVK, so VLEK chains cannot verify offline
	}{
		{"testdata/trustee-test-report.bin", "testdata/trustee-test-vcek.der", "VCEK", true},
		{"testdata/trustee-test-vlek-report.bin", "testdata/trustee-test-vlek.der", "VLEK", false},
	} {
		t.Run(tc.certType, func(t *testing.T) {
			raw, err := os.ReadFile(tc.report)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := os.ReadFile(tc.cert)
			if err != nil {
				t.Fatal(err)
			}
			report, err := snp.ParseReport(raw)
			if err != nil {
				t.Fatalf("ParseReport: %v", err)
			}
			back, err := report.Raw()
			if err != nil {
				t.Fatalf("Raw: %v", err)
			}
			if !bytes.Equal(back[:0x2A0], raw[:0x2A0]) || !bytes.Equal(back[0x2A0:0x2A0+144], raw[0x2A0:0x2A0+144]) {
				t.Fatal("raw -> JSON -> raw changed the signed bytes or the signature")
			}
			if !tc.verify {
				return
			}
			var ct snp.CertType
			if err := json.Unmarshal([]byte(`"`+tc.certType+`"`), &ct); err != nil {
				t.Fatal(err)
			}
			ev, err := json.Marshal(snp.Evidence{AttestationReport: *report, CertChain: []snp.CertTableEntry{{CertType: ct, Data: cert}}})
			if err != nil {
				t.Fatal(err)
			}
			v, err := snp.NewVerifier(snp.VerifierOptions{
				Product:             &spb.SevProduct{Name: spb.SevProduct_SEV_PRODUCT_MILAN},
				DisableCertFetching: true,
				Now:                 func() time.Time { return time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(context.Background(), ev, report.ReportData); err != nil {
				t.Fatalf("Verify against real AMD roots: %v", err)
			}
			if _, err := v.Verify(context.Background(), snptest.Tamper(t, ev), report.ReportData); err == nil {
				t.Fatal("tampered real report verified")
			}
		})
	}
}

func FuzzVerifyEvidence(f *testing.F) {
	a, v := snptest.New(f)
	teetest.FuzzVerify(f, a, v,
		`{"attestation_report":{"version":2},"cert_chain":null}`,
		`{"cert_chain":[{"cert_type":{"OTHER":"00000000-0000-0000-0000-000000000001"},"data":[1,2]}]}`)
}

func FuzzParseReport(f *testing.F) {
	raw, err := os.ReadFile("testdata/trustee-test-report.bin")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := snp.ParseReport(data)
		if err != nil {
			return
		}
		back, err := r.Raw()
		if err != nil {
			t.Fatalf("Raw of a parsed report: %v", err)
		}
		r2, err := snp.ParseReport(back)
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		j1, _ := json.Marshal(r)
		j2, _ := json.Marshal(r2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("report changed across raw round trip:\n%s\n%s", j1, j2)
		}
	})
}

func BenchmarkEvidenceVerify(b *testing.B) {
	a, v := snptest.New(b)
	teetest.BenchmarkRoundTrip(b, a, v, teetest.RandomBytes(b, 64))
}
