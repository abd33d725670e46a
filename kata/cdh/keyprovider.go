package cdh

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/containerd/log"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/kata/api/keyproviderpb"
)

// Upstream answers a request it cannot parse with this message, without
// the "[CDH]" prefix its other errors carry.
const msgKeyProviderParse = "[ERROR] UnwrapKey Parse request failed"

// msgWrapKeyUnsupported is what upstream's generated service answers for
// WrapKey, which CDH does not implement (code NOT_FOUND).
const msgWrapKeyUnsupported = "/keyprovider.KeyProviderService/WrapKey is not supported"

// annotationPacket returns the decoded annotation packet of an ocicrypt
// keyunwrap request (KeyProviderKeyWrapProtocolInput JSON). As upstream's
// serde struct has it, field names are case-sensitive, "op" must be a
// string, "keywrapparams" must be present (its value is not read), and
// keyunwrapparams.annotation must be a base64 (standard, padded) string.
func annotationPacket(b []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, err
	}
	var op *string
	if err := json.Unmarshal(orNull(top["op"]), &op); err != nil || op == nil {
		return nil, errors.New("field op: missing or not a string")
	}
	if _, ok := top["keywrapparams"]; !ok {
		return nil, errors.New("missing field keywrapparams")
	}
	var unwrap map[string]json.RawMessage
	if err := json.Unmarshal(orNull(top["keyunwrapparams"]), &unwrap); err != nil || unwrap == nil {
		return nil, errors.New("field keyunwrapparams: missing or not an object")
	}
	var annotation *string
	if err := json.Unmarshal(orNull(unwrap["annotation"]), &annotation); err != nil {
		return nil, errors.New("field keyunwrapparams.annotation: not a string")
	}
	if annotation == nil {
		return nil, errors.New("Illegal UnwrapKey request: no AnnotationPacket given.") //nolint:staticcheck // upstream's message
	}
	return base64.StdEncoding.DecodeString(*annotation)
}

// orNull reads an absent field as JSON null.
func orNull(v json.RawMessage) json.RawMessage {
	if v == nil {
		return json.RawMessage("null")
	}
	return v
}

type keyProvider struct{ *Service }

// WrapKey is not a CDH operation (images are encrypted elsewhere);
// upstream's answer is kept.
func (keyProvider) WrapKey(context.Context, *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	return nil, status.Error(codes.NotFound, msgWrapKeyUnsupported)
}

// UnWrapKey unwraps an attestation-agent annotation packet with its KEK
// from the KBS and answers ocicrypt's KeyProviderKeyWrapProtocolOutput:
// {"keyunwrapresults":{"optsdata":[...]}}, where optsdata is the
// PrivateLayerBlockCipherOptions JSON written, as upstream's serde does
// for a Vec<u8>, as an array of byte values.
func (k keyProvider) UnWrapKey(ctx context.Context, req *keyproviderpb.KeyProviderKeyWrapProtocolInput) (*keyproviderpb.KeyProviderKeyWrapProtocolOutput, error) {
	raw, err := annotationPacket(req.GetKeyProviderKeyWrapProtocolInput())
	if err != nil {
		log.G(ctx).WithError(err).Error("[ttRPC CDH] UnWrapKey: parse KeyProviderInput")
		return nil, status.Error(codes.Internal, msgKeyProviderParse)
	}
	if k.o.Resources == nil {
		return nil, failure(ctx, "UnWrapKey", msgUnwrapKey, errNotConfigured("KBS"))
	}
	p, err := decrypt.ParseAnnotationPacket(raw)
	if err != nil {
		return nil, failure(ctx, "UnWrapKey", msgUnwrapKey, err)
	}
	opts, err := p.Unwrap(ctx, k.o.Resources)
	if err != nil {
		return nil, failure(ctx, "UnWrapKey", msgUnwrapKey, err)
	}
	defer clear(opts)
	return &keyproviderpb.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: unwrapOutput(opts)}, nil
}

// unwrapOutput encodes the KeyUnwrapOutput JSON exactly as upstream's
// serde_json does.
func unwrapOutput(opts []byte) []byte {
	const head, tail = `{"keyunwrapresults":{"optsdata":[`, `]}}`
	out := make([]byte, 0, len(head)+4*len(opts)+len(tail))
	out = append(out, head...)
	for i, b := range opts {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, uint64(b), 10)
	}
	return append(out, tail...)
}
