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

// keyProviderInput is the part of ocicrypt's keyprovider protocol input
// (KeyProviderKeyWrapProtocolInput JSON) that CDH reads. Like upstream's
// serde struct, "op", "keywrapparams" and "keyunwrapparams" must be
// present (their values are not checked) and the annotation, when present,
// must be a string.
type keyProviderInput struct {
	Op              *string          `json:"op"`
	KeyWrapParams   *json.RawMessage `json:"keywrapparams"`
	KeyUnwrapParams *struct {
		Annotation *string `json:"annotation"`
	} `json:"keyunwrapparams"`
}

// annotationPacket returns the decoded annotation packet of an ocicrypt
// keyunwrap request.
func annotationPacket(b []byte) ([]byte, error) {
	var in keyProviderInput
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, err
	}
	switch {
	case in.Op == nil:
		return nil, errors.New("missing field op")
	case in.KeyWrapParams == nil:
		return nil, errors.New("missing field keywrapparams")
	case in.KeyUnwrapParams == nil:
		return nil, errors.New("missing field keyunwrapparams")
	case in.KeyUnwrapParams.Annotation == nil:
		return nil, errors.New("Illegal UnwrapKey request: no AnnotationPacket given.") //nolint:staticcheck // upstream's message
	}
	return base64.StdEncoding.DecodeString(*in.KeyUnwrapParams.Annotation)
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
