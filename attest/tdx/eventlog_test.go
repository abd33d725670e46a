package tdx

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// aaelRecord builds the TCG2 record the Attestation Agent appends for text
// (COCO_SPEC 2.5): MR index, EV_EVENT_TAG, one SHA-384 digest of the
// tagged event, then the tagged event.
func aaelRecord(mr uint32, text string) []byte {
	tagged := binary.LittleEndian.AppendUint32(nil, aaelTaggedID)
	tagged = binary.LittleEndian.AppendUint32(tagged, uint32(len(text)))
	tagged = append(tagged, text...)
	d := sha512.Sum384(tagged)
	rec := binary.LittleEndian.AppendUint32(nil, mr)
	rec = binary.LittleEndian.AppendUint32(rec, evEventTag)
	rec = binary.LittleEndian.AppendUint32(rec, 1)
	rec = binary.LittleEndian.AppendUint16(rec, algSHA384)
	rec = append(rec, d[:]...)
	rec = binary.LittleEndian.AppendUint32(rec, uint32(len(tagged)))
	return append(rec, tagged...)
}

func TestAAELRecordMatchesVector(t *testing.T) {
	// attest/eventlog/testdata/aael-digests.json: tcg2_record_for_init_pcr17_on_tdx.
	want := "0400000006000000010000000c00dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02200000004c45414118000000646f6d61696e206f7065726174696f6e20636f6e74656e74"
	if got := hexString(aaelRecord(4, "domain operation content")); got != want {
		t.Fatalf("record = %s\nwant %s", got, want)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, v := range b {
		out = append(out, digits[v>>4], digits[v&15])
	}
	return string(out)
}

func TestReadEventLog(t *testing.T) {
	dir := t.TempDir()
	aael := append(aaelRecord(4, "a b c"), aaelRecord(4, `x y {"k":1}`)...)
	ccel, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud.bin")
	if err != nil {
		t.Fatal(err)
	}
	// A CCEL table is followed by zero fill in the ACPI region.
	ccelTable := append(append([]byte(nil), ccel[:len(ccel)-8]...), make([]byte, 4096)...)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ccelPath, aaelPath := write("CCEL", ccelTable), write("AAEL", aael)
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name       string
		ccel, aael string
		want       []byte
	}{
		{"neither", missing, missing, nil},
		{"AAEL only", missing, aaelPath, bytes.Join([][]byte{elHeader[:], aael, elEndFlag[:]}, nil)},
		{"CCEL only", ccelPath, missing, ccel},
		{"CCEL and AAEL", ccelPath, aaelPath, bytes.Join([][]byte{ccel[:len(ccel)-8], aael, elEndFlag[:]}, nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readEventLog(tc.ccel, tc.aael)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
			if got != nil {
				if _, err := ParseEventLog(got); err != nil {
					t.Fatalf("assembled log does not parse: %v", err)
				}
			}
		})
	}
	if _, err := readEventLog(write("bad", []byte{1, 2, 3}), missing); err == nil {
		t.Error("truncated CCEL accepted")
	}
}

// Trustee's parsed output of its CCEL+AAEL sample is the reference for our
// uefi_event_logs claim.
func TestEventClaimsMatchTrustee(t *testing.T) {
	raw, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud.bin")
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud_out.json")
	if err != nil {
		t.Fatal(err)
	}
	var want struct {
		Logs []map[string]any `json:"uefi_event_logs"`
	}
	if err := json.Unmarshal(wantJSON, &want); err != nil {
		t.Fatal(err)
	}
	events, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	gotJSON, _ := json.Marshal(eventClaims(events))
	var got []map[string]any
	if err := json.Unmarshal(gotJSON, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want.Logs) {
		t.Fatalf("%d events, want %d", len(got), len(want.Logs))
	}
	aael := 0
	for i := range got {
		for _, k := range []string{"index", "type_name", "digests", "event", "digest_matches_event"} {
			if !reflect.DeepEqual(got[i][k], want.Logs[i][k]) {
				t.Errorf("event %d %s = %v, want %v", i, k, got[i][k], want.Logs[i][k])
			}
		}
		if d, ok := want.Logs[i]["details"].(map[string]any); ok && d["unicode_name"] == "AAEL" {
			aael++
			if !reflect.DeepEqual(got[i]["details"], d) {
				t.Errorf("event %d details = %v, want %v", i, got[i]["details"], d)
			}
		}
	}
	if aael == 0 {
		t.Fatal("no AAEL entries compared")
	}
	if _, err := ReplayRTMRs(events); err != nil {
		t.Fatalf("replay: %v", err)
	}
}

func TestTrimCCEL(t *testing.T) {
	raw, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud.bin")
	if err != nil {
		t.Fatal(err)
	}
	body := raw[:len(raw)-8]
	for _, tc := range []struct {
		name  string
		input []byte
		want  []byte
		ok    bool
	}{
		{"FF terminator", raw, body, true},
		{"zero fill", append(append([]byte(nil), body...), make([]byte, 100)...), body, true},
		{"no terminator", body, nil, false},
		{"empty", nil, nil, false},
		{"header only", elHeader[:], nil, false},
		{"header and FF", append(elHeader[:], elEndFlag[:]...), elHeader[:], true},
	} {
		got, err := trimCCEL(tc.input)
		if (err == nil) != tc.ok || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: trimCCEL = %d bytes, %v; want %d bytes, ok=%v", tc.name, len(got), err, len(tc.want), tc.ok)
		}
	}
}

func FuzzParseEventLog(f *testing.F) {
	raw, err := os.ReadFile("testdata/trustee-CCEL_AAEL_alibabacloud.bin")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(append(elHeader[:], aaelRecord(4, "a b c")...))
	f.Fuzz(func(t *testing.T, log []byte) {
		trimmed, terr := trimCCEL(log)
		events, err := ParseEventLog(log)
		if err != nil {
			return
		}
		if terr == nil && binary.LittleEndian.Uint32(log[4:]) == evNoAction {
			// A log trimCCEL accepts parses to the same events. (Like
			// upstream, trimCCEL skips a first record's data only for
			// EV_NO_ACTION, the Spec ID event every real log starts with.)
			again, err := ParseEventLog(trimmed)
			if err != nil || len(again) != len(events) {
				t.Fatalf("trimmed log: %d events, %v; untrimmed %d", len(again), err, len(events))
			}
		}
		_, _ = ReplayRTMRs(events) // any parsed log: no panic, either answer
		if _, err := json.Marshal(eventClaims(events)); err != nil {
			t.Fatalf("claims do not marshal: %v", err)
		}
	})
}
