package eventlog

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
)

// go-eventlog's TCG parser is an independent implementation: both parsers
// must agree on every event of a CCEL that ends with AAEL records we wrote.
func TestAgreesWithGoEventlog(t *testing.T) {
	bin := readTestdata(t, "trustee-CCEL_AAEL_alibabacloud.bin")
	e, _ := NewEntry("github.com/confidential-containers", "PullImage", `{"image":"x", "digest":"y"}`)
	rec, _, err := e.Record(4, SHA384)
	if err != nil {
		t.Fatal(err)
	}
	log, err := CCELWithAAEL(bin, rec)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := Parse(log)
	if err != nil {
		t.Fatal(err)
	}
	el, err := tcg.ParseEventLog(log, tcg.ParseOpts{AllowPadding: true})
	if err != nil {
		t.Fatal(err)
	}
	theirs := el.Events(register.HashSHA384)
	if len(theirs) != len(ours) {
		t.Fatalf("go-eventlog found %d events, we found %d", len(theirs), len(ours))
	}
	for i, th := range theirs {
		o := ours[i]
		if uint32(th.Index) != o.Index || uint32(th.Type) != o.Type || !bytes.Equal(th.Data, o.Data) || hex.EncodeToString(th.Digest) != o.Digests["SHA-384"] {
			t.Errorf("event %d: go-eventlog %d %v %x, ours %d %s %s", i, th.Index, th.Type, th.Digest, o.Index, o.TypeName, o.Digests["SHA-384"])
		}
	}
	if last := ours[len(ours)-1]; last.AAEL == nil || last.AAEL.Content != e.Content {
		t.Errorf("appended AAEL entry not parsed: %+v", last)
	}
}
