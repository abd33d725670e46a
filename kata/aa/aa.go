// Package aa serves the Attestation Agent's ttRPC API (guest-components'
// protos/attestation-agent/attestation-agent.proto, generated in
// kata/api/aapb) over attest/agent, the service the REST shim (restapi)
// also calls.
//
// Errors reach the client as upstream AA's do: ttRPC status INTERNAL with
// upstream's fixed "[ERROR:attestation-agent] ..." message; the cause is
// only logged. It must never log tokens, evidence or keys.
package aa

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/kata/api/aapb"
)

// DefaultSocket is upstream AA's default ttRPC address (cdh.toml's
// [aa] aa_socket default).
const DefaultSocket = config.DefaultAASocket

// Agent is what the service calls; *agent.Agent is one.
type Agent interface {
	Evidence(ctx context.Context, runtimeData []byte) ([]byte, error)
	AdditionalEvidence(ctx context.Context, runtimeData []byte) ([]byte, error)
	Token(ctx context.Context, tokenType string) ([]byte, error)
	ExtendRuntimeMeasurement(ctx context.Context, domain, operation, content string, register *uint64) (agent.MeasurementResult, error)
	BindInitData(ctx context.Context, digest []byte) error
	TEE() string
	AdditionalTEEs() []string
}

var _ Agent = (*agent.Agent)(nil)

// Upstream AA's ttRPC error messages (attestation-agent/src/bin/ttrpc_dep);
// BindInitData's is its gRPC server's, since its ttRPC server has none.
const (
	msgToken    = "[ERROR:attestation-agent] AA-KBC get token failed"
	msgEvidence = "[ERROR:attestation-agent] AA-KBC get evidence failed"
	msgExtend   = "[ERROR:attestation-agent] AA extend runtime measurement failed"
	msgBind     = "[ERROR:attestation-agent] AA binding init data failed"
)

// Service implements aapb.AttestationAgentServiceService.
type Service struct{ a Agent }

var _ aapb.AttestationAgentServiceService = (*Service)(nil)

// New returns the AA service over a.
func New(a Agent) *Service { return &Service{a: a} }

// Register registers AttestationAgentService on srv.
func (s *Service) Register(srv *ttrpc.Server) {
	aapb.RegisterAttestationAgentServiceService(srv, s)
}

func failure(ctx context.Context, method, msg string, err error) error {
	log.G(ctx).WithError(err).WithField("method", method).Error("AA (ttrpc): request failed")
	return status.Error(codes.Internal, msg)
}

// GetEvidence returns the primary attester's evidence for RuntimeData.
func (s *Service) GetEvidence(ctx context.Context, req *aapb.GetEvidenceRequest) (*aapb.GetEvidenceResponse, error) {
	ev, err := s.a.Evidence(ctx, req.GetRuntimeData())
	if err != nil {
		return nil, failure(ctx, "GetEvidence", msgEvidence, err)
	}
	return &aapb.GetEvidenceResponse{Evidence: ev}, nil
}

// GetAdditionalEvidence returns the additional attesters' evidence (empty
// when there are none, as upstream).
func (s *Service) GetAdditionalEvidence(ctx context.Context, req *aapb.GetAdditionalEvidenceRequest) (*aapb.GetEvidenceResponse, error) {
	ev, err := s.a.AdditionalEvidence(ctx, req.GetRuntimeData())
	if err != nil {
		return nil, failure(ctx, "GetAdditionalEvidence", msgEvidence, err)
	}
	return &aapb.GetEvidenceResponse{Evidence: ev}, nil
}

// GetToken returns a "kbs" or "coco_as" token as upstream does.
func (s *Service) GetToken(ctx context.Context, req *aapb.GetTokenRequest) (*aapb.GetTokenResponse, error) {
	tok, err := s.a.Token(ctx, req.GetTokenType())
	if err != nil {
		return nil, failure(ctx, "GetToken", msgToken, err)
	}
	return &aapb.GetTokenResponse{Token: tok}, nil
}

// ExtendRuntimeMeasurement records an event and extends its register; a
// disabled event log or a TEE without runtime measurement is a result, not
// an error, as upstream.
func (s *Service) ExtendRuntimeMeasurement(ctx context.Context, req *aapb.ExtendRuntimeMeasurementRequest) (*aapb.ExtendRuntimeMeasurementResponse, error) {
	res, err := s.a.ExtendRuntimeMeasurement(ctx, req.GetDomain(), req.GetOperation(), req.GetContent(), req.RegisterIndex)
	if err != nil {
		return nil, failure(ctx, "ExtendRuntimeMeasurement", msgExtend, err)
	}
	var r aapb.RuntimeMeasurementResult
	switch res {
	case agent.MeasurementOK:
		r = aapb.RuntimeMeasurementResult_OK
	case agent.MeasurementNotSupported:
		r = aapb.RuntimeMeasurementResult_NOT_SUPPORTED
	case agent.MeasurementNotEnabled:
		r = aapb.RuntimeMeasurementResult_NOT_ENABLED
	default:
		return nil, failure(ctx, "ExtendRuntimeMeasurement", msgExtend, fmt.Errorf("unknown measurement result %d", res))
	}
	return &aapb.ExtendRuntimeMeasurementResponse{Result: r}, nil
}

// BindInitData binds Digest to the platform. A TEE that binds nothing
// succeeds, as upstream's InitDataResult::Unsupported does; a mismatch is
// an error.
func (s *Service) BindInitData(ctx context.Context, req *aapb.BindInitDataRequest) (*aapb.BindInitDataResponse, error) {
	err := s.a.BindInitData(ctx, req.GetDigest())
	if errors.Is(err, initdata.ErrUnsupportedTEE) {
		log.G(ctx).Info("AA (ttrpc): this TEE does not bind init-data; skipped")
		err = nil
	}
	if err != nil {
		return nil, failure(ctx, "BindInitData", msgBind, err)
	}
	return &aapb.BindInitDataResponse{}, nil
}

// GetTeeType names the primary TEE as upstream's Tee enum serializes.
func (s *Service) GetTeeType(context.Context, *aapb.GetTeeTypeRequest) (*aapb.GetTeeTypeResponse, error) {
	return &aapb.GetTeeTypeResponse{Tee: s.a.TEE()}, nil
}

// GetAdditionalTees lists the additional attesters' TEEs.
func (s *Service) GetAdditionalTees(context.Context, *aapb.GetAdditionalTeesRequest) (*aapb.GetAdditionalTeesResponse, error) {
	return &aapb.GetAdditionalTeesResponse{AdditionalTees: s.a.AdditionalTEEs()}, nil
}
