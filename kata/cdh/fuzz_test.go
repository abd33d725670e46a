package cdh

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
)

// FuzzKeyProviderInput: the UnWrapKey request is untrusted JSON. Parsing
// never panics, and a request it accepts carried an annotation.
func FuzzKeyProviderInput(f *testing.F) {
	f.Add([]byte(`{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":null,"annotation":"eyJraWQiOiJrYnM6Ly8vYS9iL2MifQ=="}}`))
	f.Add([]byte(`{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{}}`))
	f.Add([]byte(`{"op":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := annotationPacket(b)
		if err != nil {
			return
		}
		var in struct {
			Op     *string         `json:"op"`
			Wrap   json.RawMessage `json:"keywrapparams"`
			Unwrap struct {
				Annotation *string `json:"annotation"`
			} `json:"keyunwrapparams"`
		}
		if err := json.Unmarshal(b, &in); err != nil || in.Op == nil || in.Wrap == nil || in.Unwrap.Annotation == nil {
			t.Fatalf("accepted %q (packet %d bytes), which lacks a required field", b, len(p))
		}
		if d, err := base64.StdEncoding.DecodeString(*in.Unwrap.Annotation); err != nil || !bytes.Equal(d, p) {
			t.Fatalf("accepted %q: packet is not its annotation", b)
		}
	})
}

// FuzzUnwrapOutput: the reply encodes any options bytes as upstream's
// array of byte values, which decodes back to the same bytes.
func FuzzUnwrapOutput(f *testing.F) {
	f.Add([]byte(`{"symkey":"AAAA"}`))
	f.Add([]byte{})
	f.Add([]byte{0, 255, 10})
	f.Fuzz(func(t *testing.T, opts []byte) {
		var out struct {
			R struct {
				O []int `json:"optsdata"`
			} `json:"keyunwrapresults"`
		}
		if err := json.Unmarshal(unwrapOutput(opts), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.R.O) != len(opts) {
			t.Fatalf("%d values for %d bytes", len(out.R.O), len(opts))
		}
		for i, v := range out.R.O {
			if v != int(opts[i]) {
				t.Fatalf("value %d is %d, want %d", i, v, opts[i])
			}
		}
	})
}
