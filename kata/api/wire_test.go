// Package api_test checks the generated code in kata/api against
// guest-components' .proto files (confidential-data-hub/api.proto and
// keyprovider.proto, attestation-agent/attestation-agent.proto at
// 8246e5e0977f6322f0a1b0f77e0739cf1c3e1f74): the schema, transcribed below
// from upstream, and the bytes of one request per service.
package api_test

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cocoon-cc/cocoon/kata/api/aapb"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/api/keyproviderpb"
)

// upstreamSchema is every field ("message.field number kind cardinality",
// proto3 optional marked) and method ("/package.Service/Method in out") of
// upstream's files.
var upstreamSchema = []string{
	"api.UnsealSecretInput.secret 1 bytes optional",
	"api.UnsealSecretOutput.plaintext 1 bytes optional",
	"api.GetResourceRequest.ResourcePath 1 string optional",
	"api.GetResourceResponse.Resource 1 bytes optional",
	"api.SecureMountRequest.volume_type 1 string optional",
	"api.SecureMountRequest.options 2 map<string,string>",
	"api.SecureMountRequest.flags 3 string repeated",
	"api.SecureMountRequest.mount_point 4 string optional",
	"api.ImagePullRequest.image_url 1 string optional",
	"api.ImagePullRequest.bundle_path 2 string optional",
	"api.ImagePullResponse.manifest_digest 1 string optional",
	"/api.SealedSecretService/UnsealSecret api.UnsealSecretInput api.UnsealSecretOutput",
	"/api.GetResourceService/GetResource api.GetResourceRequest api.GetResourceResponse",
	"/api.SecureMountService/SecureMount api.SecureMountRequest api.SecureMountResponse",
	"/api.ImagePullService/PullImage api.ImagePullRequest api.ImagePullResponse",

	"keyprovider.KeyProviderKeyWrapProtocolInput.KeyProviderKeyWrapProtocolInput 1 bytes optional",
	"keyprovider.KeyProviderKeyWrapProtocolOutput.KeyProviderKeyWrapProtocolOutput 1 bytes optional",
	"/keyprovider.KeyProviderService/WrapKey keyprovider.KeyProviderKeyWrapProtocolInput keyprovider.KeyProviderKeyWrapProtocolOutput",
	"/keyprovider.KeyProviderService/UnWrapKey keyprovider.KeyProviderKeyWrapProtocolInput keyprovider.KeyProviderKeyWrapProtocolOutput",

	"attestation_agent.GetEvidenceRequest.RuntimeData 1 bytes optional",
	"attestation_agent.GetAdditionalEvidenceRequest.RuntimeData 1 bytes optional",
	"attestation_agent.GetEvidenceResponse.Evidence 1 bytes optional",
	"attestation_agent.GetTokenRequest.TokenType 1 string optional",
	"attestation_agent.GetTokenResponse.Token 1 bytes optional",
	"attestation_agent.ExtendRuntimeMeasurementRequest.Domain 1 string optional",
	"attestation_agent.ExtendRuntimeMeasurementRequest.Operation 2 string optional",
	"attestation_agent.ExtendRuntimeMeasurementRequest.Content 3 string optional",
	"attestation_agent.ExtendRuntimeMeasurementRequest.RegisterIndex 4 uint64 optional proto3-optional",
	"attestation_agent.ExtendRuntimeMeasurementResponse.Result 1 enum attestation_agent.RuntimeMeasurementResult{OK=0,NOT_SUPPORTED=1,NOT_ENABLED=2} optional",
	"attestation_agent.BindInitDataRequest.Digest 1 bytes optional",
	"attestation_agent.GetTeeTypeResponse.tee 1 string optional",
	"attestation_agent.GetAdditionalTeesResponse.additional_tees 1 string repeated",
	"/attestation_agent.AttestationAgentService/GetEvidence attestation_agent.GetEvidenceRequest attestation_agent.GetEvidenceResponse",
	"/attestation_agent.AttestationAgentService/GetAdditionalEvidence attestation_agent.GetAdditionalEvidenceRequest attestation_agent.GetEvidenceResponse",
	"/attestation_agent.AttestationAgentService/GetToken attestation_agent.GetTokenRequest attestation_agent.GetTokenResponse",
	"/attestation_agent.AttestationAgentService/ExtendRuntimeMeasurement attestation_agent.ExtendRuntimeMeasurementRequest attestation_agent.ExtendRuntimeMeasurementResponse",
	"/attestation_agent.AttestationAgentService/BindInitData attestation_agent.BindInitDataRequest attestation_agent.BindInitDataResponse",
	"/attestation_agent.AttestationAgentService/GetTeeType attestation_agent.GetTeeTypeRequest attestation_agent.GetTeeTypeResponse",
	"/attestation_agent.AttestationAgentService/GetAdditionalTees attestation_agent.GetAdditionalTeesRequest attestation_agent.GetAdditionalTeesResponse",
}

func describeField(f protoreflect.FieldDescriptor) string {
	s := fmt.Sprintf("%s %d ", f.FullName(), f.Number())
	switch {
	case f.IsMap():
		return s + fmt.Sprintf("map<%s,%s>", f.MapKey().Kind(), f.MapValue().Kind())
	case f.Kind() == protoreflect.EnumKind:
		e := f.Enum()
		var vals []string
		for i := 0; i < e.Values().Len(); i++ {
			v := e.Values().Get(i)
			vals = append(vals, fmt.Sprintf("%s=%d", v.Name(), v.Number()))
		}
		s += fmt.Sprintf("enum %s{%s}", e.FullName(), joinComma(vals))
	default:
		s += f.Kind().String()
	}
	s += " " + f.Cardinality().String()
	if f.HasOptionalKeyword() {
		s += " proto3-optional"
	}
	return s
}

func joinComma(v []string) string {
	var b bytes.Buffer
	for i, s := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s)
	}
	return b.String()
}

func TestSchemaMatchesUpstream(t *testing.T) {
	var got []string
	for _, fd := range []protoreflect.FileDescriptor{
		cdhpb.File_confidential_data_hub_api_proto,
		keyproviderpb.File_confidential_data_hub_keyprovider_proto,
		aapb.File_attestation_agent_attestation_agent_proto,
	} {
		msgs := fd.Messages()
		for i := 0; i < msgs.Len(); i++ {
			fields := msgs.Get(i).Fields()
			for j := 0; j < fields.Len(); j++ {
				got = append(got, describeField(fields.Get(j)))
			}
		}
		svcs := fd.Services()
		for i := 0; i < svcs.Len(); i++ {
			ms := svcs.Get(i).Methods()
			for j := 0; j < ms.Len(); j++ {
				m := ms.Get(j)
				if m.IsStreamingClient() || m.IsStreamingServer() {
					t.Errorf("%s streams; upstream's methods are unary", m.FullName())
				}
				got = append(got, fmt.Sprintf("/%s/%s %s %s", svcs.Get(i).FullName(), m.Name(), m.Input().FullName(), m.Output().FullName()))
			}
		}
	}
	want := slices.Clone(upstreamSchema)
	slices.Sort(got)
	slices.Sort(want)
	for _, w := range want {
		if _, ok := slices.BinarySearch(got, w); !ok {
			t.Errorf("missing or different: %s", w)
		}
	}
	for _, g := range got {
		if _, ok := slices.BinarySearch(want, g); !ok {
			t.Errorf("not upstream's: %s", g)
		}
	}
}

// wire builds a message from (field number, value) pairs the way any
// protobuf encoder lays them out; values are []byte/string (length
// delimited), uint64 (varint) or [][2]any (a nested message).
func wire(fields ...any) []byte {
	var b []byte
	for i := 0; i < len(fields); i += 2 {
		n := protowire.Number(fields[i].(int))
		switch v := fields[i+1].(type) {
		case string:
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendString(b, v)
		case []byte:
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		case uint64:
			b = protowire.AppendTag(b, n, protowire.VarintType)
			b = protowire.AppendVarint(b, v)
		default:
			panic(fmt.Sprintf("wire: %T", v))
		}
	}
	return b
}

func TestRequestBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"UnsealSecret", &cdhpb.UnsealSecretInput{Secret: []byte("sealed.a.b.c")}, wire(1, "sealed.a.b.c")},
		{"GetResource", &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/key/1"}, wire(1, "kbs:///default/key/1")},
		{
			"SecureMount",
			&cdhpb.SecureMountRequest{
				VolumeType: "block-device",
				Options:    map[string]string{"deviceId": "7:0", "sourceType": "empty"},
				Flags:      []string{"ro", "nosuid"},
				MountPoint: "/run/vol",
			},
			// A map is a repeated entry message {1: key, 2: value}; the
			// deterministic encoder sorts entries by key.
			wire(1, "block-device",
				2, wire(1, "deviceId", 2, "7:0"),
				2, wire(1, "sourceType", 2, "empty"),
				3, "ro", 3, "nosuid",
				4, "/run/vol"),
		},
		{"PullImage", &cdhpb.ImagePullRequest{ImageUrl: "registry.example/app:1", BundlePath: "/run/kata-containers/c1"}, wire(1, "registry.example/app:1", 2, "/run/kata-containers/c1")},
		{"UnWrapKey", &keyproviderpb.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte(`{"op":"keyunwrap"}`)}, wire(1, `{"op":"keyunwrap"}`)},
		{"GetEvidence", &aapb.GetEvidenceRequest{RuntimeData: []byte{0, 1, 2}}, wire(1, []byte{0, 1, 2})},
		{"GetToken", &aapb.GetTokenRequest{TokenType: "kbs"}, wire(1, "kbs")},
		// proto3 optional: a present zero register index is on the wire.
		{"ExtendRuntimeMeasurement", &aapb.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c", RegisterIndex: proto.Uint64(0)}, wire(1, "d", 2, "o", 3, "c", 4, uint64(0))},
		{"ExtendRuntimeMeasurement/no register", &aapb.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c"}, wire(1, "d", 2, "o", 3, "c")},
		{"ExtendRuntimeMeasurementResponse", &aapb.ExtendRuntimeMeasurementResponse{Result: aapb.RuntimeMeasurementResult_NOT_ENABLED}, wire(1, uint64(2))},
		{"BindInitData", &aapb.BindInitDataRequest{Digest: []byte{0xaa}}, wire(1, []byte{0xaa})},
		{"GetAdditionalTees", &aapb.GetAdditionalTeesResponse{AdditionalTees: []string{"tdx", "snp"}}, wire(1, "tdx", 1, "snp")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("marshalled\n%x\nwant\n%x", got, tc.want)
			}
			back := tc.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(tc.want, back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(back, tc.msg) {
				t.Fatalf("decoded %v, want %v", back, tc.msg)
			}
		})
	}
}
