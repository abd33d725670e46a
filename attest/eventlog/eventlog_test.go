package eventlog

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
)

type digestVectors struct {
	EventText   string            `json:"event_text"`
	TaggedHex   string            `json:"tagged_event_bytes_hex"`
	Digests     map[string]string `json:"digests"`
	RecordHex   string            `json:"tcg2_record_for_init_pcr17_on_tdx_hex_(derived)"`
	TrusteeDemo struct {
		EventB64 string `json:"event_b64"`
		SHA384   string `json:"sha384"`
	} `json:"trustee_example"`
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDigestVectors(t *testing.T) {
	var v digestVectors
	if err := json.Unmarshal(readTestdata(t, "aael-digests.json"), &v); err != nil {
		t.Fatal(err)
	}
	e, err := ParseEntryText(v.EventText)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(TaggedEvent(e.Text())); got != v.TaggedHex {
		t.Errorf("tagged event = %s, want %s", got, v.TaggedHex)
	}
	for name, want := range v.Digests {
		t.Run(name, func(t *testing.T) {
			alg, err := ParseAlg(name)
			if err != nil {
				t.Fatal(err)
			}
			d, err := e.Digest(alg)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(d); got != want {
				t.Errorf("digest = %s, want %s", got, want)
			}
		})
	}
	mr, err := MRIndex("tdx", DefaultInitPCR)
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := e.Record(mr, SHA384)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(rec); got != v.RecordHex {
		t.Errorf("record = %s, want %s", got, v.RecordHex)
	}
	ev, _ := base64.StdEncoding.DecodeString(v.TrusteeDemo.EventB64)
	te, err := ParseEntryText(string(ev[8:]))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := te.Digest(SHA384); hex.EncodeToString(d) != v.TrusteeDemo.SHA384 {
		t.Errorf("trustee example digest = %x, want %s", d, v.TrusteeDemo.SHA384)
	}
}

func TestNewEntry(t *testing.T) {
	for _, tc := range []struct {
		name, domain, op, content string
		wantErr                   string
	}{
		{"ok", "github.com/confidential-containers", "PullImage", `{"image":"x", "digest":"y"}`, ""},
		{"empty content ok", "d", "o", "", ""},
		{"content with spaces ok", "d", "o", "a b c", ""},
		{"non-ascii domain", "dé", "o", "c", ""},
		{"control char", "d\x01", "o", "c", ""},
		{"carriage return in content", "d", "o", "a\rb", ""},
		{"newline content", "d", "o", "a\nb", "content contains newline"},
		{"newline at the end of content", "d", "o", "ab\n", "content contains newline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEntry(tc.domain, tc.op, tc.content)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				back, err := ParseEntryText(e.Text())
				if err != nil || back != e {
					t.Fatalf("text round trip: %+v, %v", back, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestNewEntryAcceptsWhatUpstreamAccepts: upstream's Event::new refuses
// only a newline in the content; an entry upstream records must be
// recorded here too, and its text measured as upstream joins it.
func TestNewEntryAcceptsWhatUpstreamAccepts(t *testing.T) {
	for _, tc := range []struct{ name, domain, op string }{
		{"empty domain", "", "o"},
		{"empty operation", "d", ""},
		{"space in domain", "a b", "o"},
		{"tab in operation", "d", "o\tp"},
		{"newline in domain", "d\ne", "o"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEntry(tc.domain, tc.op, "c")
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if want := tc.domain + " " + tc.op + " c"; e.Text() != want {
				t.Fatalf("text %q, want %q", e.Text(), want)
			}
			// Recovery re-parses the text; the entry it finds measures the same.
			back, err := ParseEntryText(e.Text())
			if err != nil || back.Text() != e.Text() {
				t.Fatalf("recovered %+v, %v", back, err)
			}
		})
	}
}

func TestMRIndex(t *testing.T) {
	for _, tc := range []struct {
		tee  string
		pcr  int
		want uint32
	}{
		{"tdx", 0, 4}, {"tdx", 1, 1}, {"tdx", 7, 1}, {"tdx", 2, 2}, {"tdx", 6, 2},
		{"tdx", 8, 3}, {"tdx", 15, 3}, {"tdx", 16, 4}, {"tdx", 17, 4},
		{"tpm", 17, 17}, {"tpm", 8, 8}, {"", 0, 0},
	} {
		got, err := MRIndex(tc.tee, tc.pcr)
		if err != nil || got != tc.want {
			t.Errorf("MRIndex(%q, %d) = %d, %v; want %d", tc.tee, tc.pcr, got, err, tc.want)
		}
	}
	if _, err := MRIndex("tdx", -1); err == nil {
		t.Error("negative PCR accepted")
	}
}

func TestAlgForTEE(t *testing.T) {
	for _, tc := range []struct {
		tee     string
		want    Alg
		wantErr bool
	}{{"tdx", SHA384, false}, {"tpm", SHA256, false}, {"az-tdx-vtpm", SHA256, false}, {"snp", 0, true}, {"sample", 0, true}} {
		got, err := AlgForTEE(tc.tee)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("AlgForTEE(%q) = %v, %v", tc.tee, got, err)
		}
		if err != nil && !errors.Is(err, attest.ErrNotSupported) {
			t.Errorf("AlgForTEE(%q) error does not wrap ErrNotSupported", tc.tee)
		}
	}
}

type trusteeEvent struct {
	Index    uint32 `json:"index"`
	TypeName string `json:"type_name"`
	Digests  []struct {
		Alg    string `json:"alg"`
		Digest string `json:"digest"`
	} `json:"digests"`
	Event   string `json:"event"`
	Matches bool   `json:"digest_matches_event"`
	Details struct {
		UnicodeName string `json:"unicode_name"`
		String      string `json:"string"`
		Data        *struct {
			Domain    string `json:"domain"`
			Operation string `json:"operation"`
			Content   any    `json:"content"`
		} `json:"data"`
	} `json:"details"`
}

func TestTrusteeSample(t *testing.T) {
	var out struct {
		Events []trusteeEvent `json:"uefi_event_logs"`
	}
	if err := json.Unmarshal(readTestdata(t, "trustee-CCEL_AAEL_alibabacloud_out.json"), &out); err != nil {
		t.Fatal(err)
	}
	events, err := Parse(readTestdata(t, "trustee-CCEL_AAEL_alibabacloud.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != len(out.Events) {
		t.Fatalf("parsed %d events, Trustee %d", len(events), len(out.Events))
	}
	aael := 0
	for i, want := range out.Events {
		got := events[i]
		if got.Index != want.Index || got.TypeName != want.TypeName {
			t.Errorf("event %d: %d %s, want %d %s", i, got.Index, got.TypeName, want.Index, want.TypeName)
		}
		wantDigests := map[string]string{}
		for _, d := range want.Digests {
			wantDigests[d.Alg] = d.Digest
		}
		if !reflect.DeepEqual(got.Digests, wantDigests) {
			t.Errorf("event %d digests = %v, want %v", i, got.Digests, wantDigests)
		}
		if base64.StdEncoding.EncodeToString(got.Data) != want.Event {
			t.Errorf("event %d data differs", i)
		}
		if got.DigestMatchesEvent != want.Matches {
			t.Errorf("event %d digest_matches_event = %v, want %v", i, got.DigestMatchesEvent, want.Matches)
		}
		if want.Details.UnicodeName != "AAEL" {
			if got.AAEL != nil {
				t.Errorf("event %d parsed as AAEL", i)
			}
			continue
		}
		aael++
		if got.AAEL == nil {
			t.Fatalf("event %d: AAEL entry not recognised", i)
		}
		if got.AAEL.Text != want.Details.String || got.AAEL.Domain != want.Details.Data.Domain || got.AAEL.Operation != want.Details.Data.Operation {
			t.Errorf("event %d AAEL = %+v, want %+v", i, got.AAEL, want.Details)
		}
		// Trustee parses content as JSON when it can.
		var content any = got.AAEL.Content
		var j any
		if json.Unmarshal([]byte(got.AAEL.Content), &j) == nil {
			content = j
		}
		if !reflect.DeepEqual(content, want.Details.Data.Content) {
			t.Errorf("event %d content = %v, want %v", i, content, want.Details.Data.Content)
		}
	}
	if aael != 2 {
		t.Errorf("found %d AAEL events, want 2", aael)
	}

	regs, err := Replay(events, SHA384)
	if err != nil {
		t.Fatal(err)
	}
	// RTMR3 (index 4) holds only the two AAEL events: replay them by hand.
	want := make([]byte, 48)
	for _, ev := range events[len(events)-2:] {
		d, _ := hex.DecodeString(ev.Digests["SHA-384"])
		want, _ = SHA384.sum(want, d)
	}
	if !bytes.Equal(regs[4], want) {
		t.Errorf("replayed index 4 = %x, want %x", regs[4], want)
	}
	if len(regs) != 4 {
		t.Errorf("replay touched %d registers, want 4", len(regs))
	}
	if _, err := Replay(events, SHA256); err == nil {
		t.Error("replay of a missing bank succeeded")
	}
}

func TestCCELWithAAEL(t *testing.T) {
	bin := readTestdata(t, "trustee-CCEL_AAEL_alibabacloud.bin")
	base, err := Parse(bin)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEntry("d", "o", "c")
	rec, _, _ := e.Record(4, SHA384)
	e2, _ := NewEntry("d", "o", "c2")
	rec2, _, _ := e2.Record(4, SHA384)
	aael := append(append([]byte(nil), rec...), rec2...)

	// upstream EL_HEADER, written out byte for byte
	header, _ := hex.DecodeString("0000000003000000" + strings.Repeat("00", 20) + "25000000" +
		strings.Repeat("00", 24) + "02000000" + "0c003000" + "12002000" + "00")

	t.Run("with CCEL", func(t *testing.T) {
		got, err := CCELWithAAEL(bin, aael)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(bin)-8], bin[:len(bin)-8]) || !bytes.HasSuffix(got, endFlag) {
			t.Fatal("CCEL not kept up to its terminator, or no end flag")
		}
		events, err := Parse(got)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != len(base)+2 || events[len(events)-1].AAEL.Content != "c2" {
			t.Fatalf("got %d events, want %d", len(events), len(base)+2)
		}
	})
	t.Run("zero terminator and trailing bytes", func(t *testing.T) {
		ccel := append(append(bytes.Clone(bin[:len(bin)-8]), make([]byte, 8)...), 0xAB, 0xCD)
		got, err := CCELWithAAEL(ccel, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := append(bytes.Clone(bin[:len(bin)-8]), endFlag...)
		if !bytes.Equal(got, want) {
			t.Fatal("CCEL not trimmed at the zero terminator")
		}
	})
	t.Run("no CCEL", func(t *testing.T) {
		if !bytes.Equal(SpecIDHeader(), header) || len(header) != 69 {
			t.Fatalf("header = %x", SpecIDHeader())
		}
		got, err := CCELWithAAEL(nil, aael)
		if err != nil {
			t.Fatal(err)
		}
		want := append(append(bytes.Clone(header), aael...), endFlag...)
		if !bytes.Equal(got, want) {
			t.Fatal("unexpected cc_eventlog without CCEL")
		}
		events, err := Parse(got)
		if err != nil || len(events) != 2 || events[0].AAEL.Text != "d o c" {
			t.Fatalf("parse: %v %+v", err, events)
		}
	})
	t.Run("empty AAEL file", func(t *testing.T) {
		got, _ := CCELWithAAEL(nil, []byte{})
		if !bytes.Equal(got, append(bytes.Clone(header), endFlag...)) {
			t.Fatal("empty AAEL file must still give header and end flag")
		}
	})
	t.Run("nothing", func(t *testing.T) {
		if got, err := CCELWithAAEL(nil, nil); got != nil || err != nil {
			t.Fatalf("got %x, %v", got, err)
		}
	})
	t.Run("CCEL without terminator", func(t *testing.T) {
		if _, err := CCELWithAAEL(bin[:len(bin)-8], aael); err == nil || !strings.Contains(err.Error(), "no end flag") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestParseErrors(t *testing.T) {
	e, _ := NewEntry("d", "o", "c")
	rec, _, _ := e.Record(4, SHA384)
	badAlg := bytes.Clone(rec)
	badAlg[12] = 0x99
	hugeSize := bytes.Clone(rec)
	copy(hugeSize[14+48:], []byte{0xff, 0xff, 0xff, 0x7f})
	for _, tc := range []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"truncated digest", rec[:30], "truncated"},
		{"truncated data", rec[:len(rec)-1], "truncated"},
		{"unknown algorithm", badAlg, "unknown algorithm"},
		{"huge event size", hugeSize, "truncated"},
		{"short tail", append(bytes.Clone(rec), 1, 2, 3), "record 1"},
		{"bad spec id", []byte{0, 0, 0, 0, 3, 0, 0, 0, 1}, "Spec ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if ev, err := Parse(nil); err != nil || len(ev) != 0 {
		t.Fatalf("empty log: %v %v", ev, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(readTestdata(f, "trustee-CCEL_AAEL_alibabacloud.bin"))
	e, _ := NewEntry("d", "o", "c")
	rec, _, _ := e.Record(4, SHA384)
	f.Add(rec)
	f.Add(append(SpecIDHeader(), rec...))
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := Parse(b)
		if err != nil {
			return
		}
		total := 0
		for _, ev := range events {
			total += len(ev.Data)
			if ev.AAEL != nil && strings.ContainsRune(ev.AAEL.Content, '\n') {
				t.Fatal("AAEL content with newline accepted")
			}
		}
		if total > len(b) {
			t.Fatalf("event data %d bytes from a %d-byte input", total, len(b))
		}
		_, _ = Replay(events, SHA384)
		_, _ = CCELWithAAEL(b, rec)
	})
}
