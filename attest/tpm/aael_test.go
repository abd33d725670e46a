package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/eventlog"
)

type testEntry struct {
	pcr                        uint32
	domain, operation, content string
}

// buildAAEL returns the AAEL records of entries and the PCR values they
// replay to from start(pcr).
func buildAAEL(t *testing.T, start func(int) []byte, entries ...testEntry) ([]byte, map[int][]byte) {
	t.Helper()
	var log []byte
	pcrs := map[int][]byte{}
	for _, e := range entries {
		ent, err := eventlog.NewEntry(e.domain, e.operation, e.content)
		if err != nil {
			t.Fatal(err)
		}
		rec, d, err := ent.Record(e.pcr, eventlog.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, rec...)
		cur, ok := pcrs[int(e.pcr)]
		if !ok {
			cur = start(int(e.pcr))
		}
		h := sha256.Sum256(append(bytes.Clone(cur), d...))
		pcrs[int(e.pcr)] = h[:]
	}
	return log, pcrs
}

func zeros(int) []byte { return make([]byte, 32) }
func ones(int) []byte  { return bytes.Repeat([]byte{0xFF}, 32) }

func TestCheckAAEL(t *testing.T) {
	a := testEntry{23, "github.com/confidential-containers", "PullImage", `{"image":"x","digest":"sha256:00"}`}
	b := testEntry{23, "github.com/confidential-containers", "PullImage", `{"image":"y","digest":"sha256:11"}`}
	c := testEntry{16, "example.com", "op", "plain text"}
	good, goodPCRs := buildAAEL(t, zeros, a, b, c)
	on17, on17PCRs := buildAAEL(t, ones, testEntry{17, "d", "o", "c"})
	on17zero, on17zeroPCRs := buildAAEL(t, zeros, testEntry{17, "d", "o", "c"})
	on8ones, on8onesPCRs := buildAAEL(t, ones, testEntry{8, "d", "o", "c"})
	recA, _ := buildAAEL(t, zeros, a)
	without := func(m map[int][]byte, pcr int) map[int][]byte {
		out := map[int][]byte{}
		for k, v := range m {
			if k != pcr {
				out[k] = v
			}
		}
		return out
	}
	// The same record typed EV_IPL instead of EV_EVENT_TAG.
	notTag := bytes.Clone(recA)
	binary.LittleEndian.PutUint32(notTag[4:], 0xD)
	tests := []struct {
		name    string
		log     []byte
		b64     string
		quoted  map[int][]byte
		aaelPCR []int
		wantN   int
		wantErr string
	}{
		{name: "two PCRs", log: good, quoted: goodPCRs, wantN: 3},
		{name: "PCR17 from all ones", log: on17, quoted: on17PCRs, wantN: 1},
		{name: "PCR17 from zero (after DRTM)", log: on17zero, quoted: on17zeroPCRs, wantN: 1},
		{name: "PCR8 from all ones", log: on8ones, quoted: on8onesPCRs, wantErr: "does not replay to PCR 8"},
		{name: "empty log", log: []byte{}, quoted: goodPCRs, wantN: 0},
		{name: "PCR not quoted", log: good, quoted: without(goodPCRs, 16), wantErr: "quote does not cover PCR 16"},
		{name: "PCR value differs", log: good, quoted: map[int][]byte{23: goodPCRs[23], 16: make([]byte, 32)}, wantErr: "does not replay to PCR 16"},
		{name: "record dropped", log: recA, quoted: goodPCRs, wantErr: "does not replay to PCR 23"},
		{name: "content changed", log: bytes.Replace(good, []byte(`"x"`), []byte(`"z"`), 1), quoted: goodPCRs, wantErr: "does not match its digest"},
		{name: "torn", log: good[:len(good)-1], quoted: goodPCRs, wantErr: "parse aa_eventlog"},
		{name: "not an AAEL entry", log: notTag, quoted: goodPCRs, wantErr: "is not an AAEL entry"},
		{name: "bad base64", b64: "!!", quoted: goodPCRs, wantErr: "decode aa_eventlog"},
		{name: "AAEL PCRs match", log: good, quoted: goodPCRs, aaelPCR: []int{16, 23}, wantN: 3},
		{name: "AAEL PCR at reset value, no log", quoted: map[int][]byte{23: make([]byte, 32)}, aaelPCR: []int{23}, wantN: 0},
		{name: "AAEL PCR17 at reset value, no log", quoted: map[int][]byte{17: ones(17)}, aaelPCR: []int{17}, wantN: 0},
		{name: "AAEL PCR extended, no log", quoted: goodPCRs, aaelPCR: []int{23}, wantErr: "does not replay to PCR 23"},
		{name: "AAEL PCR not quoted", quoted: goodPCRs, aaelPCR: []int{20}, wantErr: "quote does not cover PCR 20"},
		{name: "record outside AAEL PCRs", log: good, quoted: goodPCRs, aaelPCR: []int{23}, wantErr: "names PCR 16, not one of the AAEL PCRs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b64 := tc.b64
			if b64 == "" {
				b64 = base64.StdEncoding.EncodeToString(tc.log)
			}
			got, err := checkAAEL(b64, tc.quoted, tc.aaelPCR)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.wantN {
				t.Fatalf("%d claims, want %d", len(got), tc.wantN)
			}
		})
	}
}

func TestAAELEventClaim(t *testing.T) {
	log, pcrs := buildAAEL(t, zeros, testEntry{23, "github.com/confidential-containers", "PullImage", `{"image":"x", "digest":"sha256:00","n":1}`})
	got, err := checkAAEL(base64.StdEncoding.EncodeToString(log), pcrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(got)
	var claims []map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	ent, _ := eventlog.NewEntry("github.com/confidential-containers", "PullImage", `{"image":"x", "digest":"sha256:00","n":1}`)
	d, _ := ent.Digest(eventlog.SHA256)
	want := map[string]any{
		"index":                float64(23),
		"type_name":            "EV_EVENT_TAG",
		"digests":              []any{map[string]any{"alg": "SHA-256", "digest": hex.EncodeToString(d)}},
		"event":                base64.StdEncoding.EncodeToString(eventlog.TaggedEvent(ent.Text())),
		"digest_matches_event": true,
		"details": map[string]any{
			"unicode_name": "AAEL",
			"string":       ent.Text(),
			"data": map[string]any{
				"domain":    "github.com/confidential-containers",
				"operation": "PullImage",
				"content":   map[string]any{"image": "x", "digest": "sha256:00", "n": float64(1)},
			},
		},
	}
	if len(claims) != 1 || !reflect.DeepEqual(claims[0], want) {
		t.Fatalf("claims = %v\nwant %v", claims, want)
	}
}

func TestContentClaim(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{`{"a":1}`, map[string]any{"a": json.Number("1")}},
		{`[1,"x"]`, []any{json.Number("1"), "x"}},
		{`"s"`, "s"},
		{`12345678901234567890`, json.Number("12345678901234567890")},
		{`plain text`, "plain text"},
		{`{"a":1} }`, `{"a":1} }`},
		{`{"a":1}{}`, `{"a":1}{}`},
		{``, ``},
	}
	for _, tc := range tests {
		if got := contentClaim(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("contentClaim(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func TestSelectionWithAAEL(t *testing.T) {
	log, _ := buildAAEL(t, zeros, testEntry{23, "d", "o", "c"}, testEntry{16, "d", "o", "c"}, testEntry{23, "d", "o", "c"})
	bad, _ := buildAAEL(t, zeros, testEntry{24, "d", "o", "c"})
	tests := []struct {
		name    string
		pcrs    []int
		aael    []byte
		want    []int
		wantErr bool
	}{
		{"no log", []int{8}, nil, []int{8}, false},
		{"adds named PCRs", []int{8, 20}, log, []int{8, 16, 20, 23}, false},
		{"already covered", []int{16, 23}, log, []int{16, 23}, false},
		{"unparsable log kept as is", []int{8}, log[:len(log)-1], []int{8}, false},
		{"PCR out of range", []int{8}, bad, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := append([]int(nil), tc.pcrs...)
			got, err := selectionWithAAEL(tc.pcrs, tc.aael)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("selection = %v, want %v", got, tc.want)
			}
			if !reflect.DeepEqual(tc.pcrs, orig) {
				t.Errorf("input selection modified: %v", tc.pcrs)
			}
		})
	}
}

func TestNewVerifierAAELPCRs(t *testing.T) {
	for _, tc := range []struct {
		pcrs []int
		ok   bool
	}{{nil, true}, {[]int{17, 23}, true}, {[]int{24}, false}, {[]int{-1}, false}} {
		_, err := NewVerifier(VerifierOptions{AAELPCRs: tc.pcrs})
		if (err == nil) != tc.ok {
			t.Errorf("NewVerifier(AAELPCRs %v) = %v, want ok=%v", tc.pcrs, err, tc.ok)
		}
	}
}
