package cdh_test

import (
	"encoding/base64"
	"encoding/json"
	"testing"
)

func base64Decode(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// ocicryptInput and ocicryptOutput have the JSON shape of ocicrypt's
// keywrap/keyprovider protocol types (v1.3.2). ocicrypt's own package
// cannot be linked beside kata/api/keyproviderpb: both register the
// protobuf service keyprovider.KeyProviderService.
type ocicryptInput struct {
	Operation     string `json:"op"`
	KeyWrapParams struct {
		Ec       *struct{} `json:"ec"`
		OptsData []byte    `json:"optsdata"`
	} `json:"keywrapparams,omitempty"`
	KeyUnwrapParams struct {
		Dc         *struct{} `json:"dc"`
		Annotation []byte    `json:"annotation"`
	} `json:"keyunwrapparams,omitempty"`
}

type ocicryptOutput struct {
	KeyWrapResults struct {
		Annotation []byte `json:"annotation"`
	} `json:"keywrapresults,omitempty"`
	KeyUnwrapResults struct {
		OptsData []byte `json:"optsdata"`
	} `json:"keyunwrapresults,omitempty"`
}

// unwrapRequest is what ocicrypt's key provider client sends to unwrap the
// annotation packet.
func unwrapRequest(t *testing.T, packet []byte) []byte {
	t.Helper()
	var in ocicryptInput
	in.Operation = "keyunwrap"
	in.KeyUnwrapParams.Annotation = packet
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
