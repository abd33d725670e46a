package sample

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
)

func TestEvidenceShape(t *testing.T) {
	// report data of attest/kbs/testdata/runtime-data-binding.json
	rd, _ := hex.DecodeString("683d25af6aaec503e6c40ae50da8fc8eeeb107992d17d5eb8085793201bc4a20c1c0cf000ddefcc0ce83527b780f347f")
	ev, err := NewAttester().Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"svn":"1","report_data":"aD0lr2quxQPmxArlDaj8ju6xB5ktF9XrgIV5MgG8SiDBwM8ADd78wM6DUnt4DzR/"}`
	if string(ev) != want {
		t.Fatalf("evidence\n got %s\nwant %s", ev, want)
	}
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	rd := bytes.Repeat([]byte{7}, 48)
	good, _ := NewAttester().Evidence(ctx, rd)
	tests := []struct {
		name     string
		evidence string
		expected []byte
		wantErr  bool
	}{
		{"match", string(good), rd, false},
		{"not checked", string(good), nil, false},
		{"wrong report data", string(good), bytes.Repeat([]byte{8}, 48), true},
		{"padded report data differs", string(good), append(append([]byte{}, rd...), 0, 0), true},
		{"no svn", `{"report_data":"` + base64.StdEncoding.EncodeToString(rd) + `"}`, rd, true},
		{"bad base64", `{"svn":"1","report_data":"***"}`, rd, true},
		{"not json", `[`, rd, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := NewVerifier().Verify(ctx, json.RawMessage(tc.evidence), tc.expected)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && claims["report_data"] != base64.StdEncoding.EncodeToString(rd) {
				t.Fatalf("report_data claim = %v", claims["report_data"])
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"svn":"1","report_data":"AAEC"}`), []byte{0, 1, 2})
	f.Add([]byte(`{"svn":1}`), []byte(nil))
	f.Fuzz(func(t *testing.T, evidence, rd []byte) {
		claims, err := NewVerifier().Verify(context.Background(), evidence, rd)
		if err != nil {
			return
		}
		got, _ := base64.StdEncoding.DecodeString(claims["report_data"].(string))
		if rd != nil && !bytes.Equal(got, rd) {
			t.Fatalf("accepted evidence whose report data %x differs from %x", got, rd)
		}
	})
}
