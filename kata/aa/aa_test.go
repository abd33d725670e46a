package aa_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/kata/aa"
	"github.com/cocoon-cc/cocoon/kata/api/aapb"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// client serves the AA over a on a unix socket and returns a ttRPC client.
func client(t *testing.T, a *agent.Agent) aapb.AttestationAgentServiceService {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "attestation-agent", "attestation-agent.sock")
	srv, err := ttrpcsock.Listen(context.Background(), "unix://"+sock, aa.New(a).Register)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	c, err := ttrpcsock.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return aapb.NewAttestationAgentServiceClient(c)
}

func newAgent(t *testing.T, o agent.Options) *agent.Agent {
	t.Helper()
	if o.Attester == nil {
		o.Attester = sample.NewAttester()
	}
	a, err := agent.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// wantStatus checks upstream's error class and exact message.
func wantStatus(t *testing.T, err error, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok || st.Code() != codes.Internal || st.Message() != msg {
		t.Fatalf("error %v, want INTERNAL %q", err, msg)
	}
}

func startKBS(t *testing.T) string {
	t.Helper()
	srv, err := server.New(server.Options{Repository: t.TempDir(), Policy: server.AllowAllPolicy, Verifiers: []attest.Verifier{sample.NewVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		ts.Close()
		_ = srv.Close()
	})
	return ts.URL
}

func TestEvidenceTokenAndTEE(t *testing.T) {
	c := client(t, newAgent(t, agent.Options{KBS: &kbs.Config{URL: startKBS(t)}}))
	ctx := context.Background()

	ev, err := c.GetEvidence(ctx, &aapb.GetEvidenceRequest{RuntimeData: []byte("nonce and key")})
	if err != nil {
		t.Fatal(err)
	}
	var sampleEv struct {
		ReportData string `json:"report_data"`
	}
	if err := json.Unmarshal(ev.GetEvidence(), &sampleEv); err != nil {
		t.Fatal(err)
	}
	if rd, _ := base64.StdEncoding.DecodeString(sampleEv.ReportData); string(rd) != "nonce and key" {
		t.Fatalf("report data %q", rd)
	}
	// Nothing is configured beyond the primary attester: upstream answers
	// with empty evidence and no additional TEEs.
	add, err := c.GetAdditionalEvidence(ctx, &aapb.GetAdditionalEvidenceRequest{RuntimeData: []byte("x")})
	if err != nil || len(add.GetEvidence()) != 0 {
		t.Fatalf("additional evidence %q, %v", add.GetEvidence(), err)
	}
	tee, err := c.GetTeeType(ctx, &aapb.GetTeeTypeRequest{})
	if err != nil || tee.GetTee() != "sample" {
		t.Fatalf("tee %q, %v", tee.GetTee(), err)
	}
	tees, err := c.GetAdditionalTees(ctx, &aapb.GetAdditionalTeesRequest{})
	if err != nil || len(tees.GetAdditionalTees()) != 0 {
		t.Fatalf("additional tees %q, %v", tees.GetAdditionalTees(), err)
	}

	tok, err := c.GetToken(ctx, &aapb.GetTokenRequest{TokenType: "kbs"})
	if err != nil {
		t.Fatal(err)
	}
	var kbsTok struct {
		Token      string `json:"token"`
		TEEKeypair string `json:"tee_keypair"`
	}
	if err := json.Unmarshal(tok.GetToken(), &kbsTok); err != nil {
		t.Fatal(err)
	}
	if strings.Count(kbsTok.Token, ".") != 2 || !strings.Contains(kbsTok.TEEKeypair, "PRIVATE KEY") {
		t.Fatalf("not a kbs token answer: token %d bytes, key pair %d bytes", len(kbsTok.Token), len(kbsTok.TEEKeypair))
	}
	// Unconfigured and unknown token types fail with upstream's message,
	// which names no cause.
	for _, tt := range []string{"coco_as", "other", ""} {
		_, err := c.GetToken(ctx, &aapb.GetTokenRequest{TokenType: tt})
		wantStatus(t, err, "[ERROR:attestation-agent] AA-KBC get token failed")
	}
}

type recordingLog struct {
	mu      sync.Mutex
	entries []string
	regs    []int
}

func (l *recordingLog) Extend(_ context.Context, domain, operation, content string, register *int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, domain+" "+operation+" "+content)
	r := -1
	if register != nil {
		r = *register
	}
	l.regs = append(l.regs, r)
	return nil
}

// measuringAttester is the sample attester with a runtime measurement
// register and init-data binding that accepts one digest.
type measuringAttester struct {
	attest.Attester
	bound []byte
}

func (measuringAttester) ExtendRuntimeMeasurement(context.Context, int, []byte) error { return nil }

func (m measuringAttester) BindInitData(_ context.Context, digest []byte) error {
	if string(digest) != string(m.bound) {
		return initdata.ErrInconsistent
	}
	return nil
}

func TestExtendRuntimeMeasurementResults(t *testing.T) {
	ctx := context.Background()
	req := &aapb.ExtendRuntimeMeasurementRequest{Domain: "github.com/cocoon-cc", Operation: "pull", Content: "sha256:00"}

	res, err := client(t, newAgent(t, agent.Options{})).ExtendRuntimeMeasurement(ctx, req)
	if err != nil || res.GetResult() != aapb.RuntimeMeasurementResult_NOT_ENABLED {
		t.Fatalf("no event log: %v, %v", res.GetResult(), err)
	}
	log := &recordingLog{}
	res, err = client(t, newAgent(t, agent.Options{EventLog: log})).ExtendRuntimeMeasurement(ctx, req)
	if err != nil || res.GetResult() != aapb.RuntimeMeasurementResult_NOT_SUPPORTED {
		t.Fatalf("sample attester: %v, %v", res.GetResult(), err)
	}

	c := client(t, newAgent(t, agent.Options{Attester: measuringAttester{Attester: sample.NewAttester()}, EventLog: log}))
	if res, err = c.ExtendRuntimeMeasurement(ctx, req); err != nil || res.GetResult() != aapb.RuntimeMeasurementResult_OK {
		t.Fatalf("measuring attester: %v, %v", res.GetResult(), err)
	}
	withReg := &aapb.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c", RegisterIndex: new(uint64(17))}
	if res, err = c.ExtendRuntimeMeasurement(ctx, withReg); err != nil || res.GetResult() != aapb.RuntimeMeasurementResult_OK {
		t.Fatalf("register 17: %v, %v", res.GetResult(), err)
	}
	if len(log.entries) != 2 || log.entries[0] != "github.com/cocoon-cc pull sha256:00" || log.regs[0] != -1 || log.regs[1] != 17 {
		t.Fatalf("event log %q registers %v", log.entries, log.regs)
	}
	huge := &aapb.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c", RegisterIndex: new(uint64(1 << 40))}
	_, err = c.ExtendRuntimeMeasurement(ctx, huge)
	wantStatus(t, err, "[ERROR:attestation-agent] AA extend runtime measurement failed")
}

func TestBindInitData(t *testing.T) {
	ctx := context.Background()
	// The sample TEE binds nothing; upstream treats that as success.
	if _, err := client(t, newAgent(t, agent.Options{})).BindInitData(ctx, &aapb.BindInitDataRequest{Digest: []byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	c := client(t, newAgent(t, agent.Options{Attester: measuringAttester{Attester: sample.NewAttester(), bound: []byte{9, 9}}}))
	if _, err := c.BindInitData(ctx, &aapb.BindInitDataRequest{Digest: []byte{9, 9}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.BindInitData(ctx, &aapb.BindInitDataRequest{Digest: []byte{1, 2, 3}})
	wantStatus(t, err, "[ERROR:attestation-agent] AA binding init data failed")
}

// TestUpstreamMethodPaths calls every method by the names upstream's
// clients put on the wire.
func TestUpstreamMethodPaths(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "aa.sock")
	srv, err := ttrpcsock.Listen(context.Background(), "unix://"+sock, aa.New(newAgent(t, agent.Options{})).Register)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := ttrpcsock.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	const svc = "attestation_agent.AttestationAgentService"
	for _, m := range []struct {
		method    string
		req, resp proto.Message
	}{
		{"GetEvidence", &aapb.GetEvidenceRequest{}, &aapb.GetEvidenceResponse{}},
		{"GetAdditionalEvidence", &aapb.GetAdditionalEvidenceRequest{}, &aapb.GetEvidenceResponse{}},
		{"ExtendRuntimeMeasurement", &aapb.ExtendRuntimeMeasurementRequest{}, &aapb.ExtendRuntimeMeasurementResponse{}},
		{"BindInitData", &aapb.BindInitDataRequest{}, &aapb.BindInitDataResponse{}},
		{"GetTeeType", &aapb.GetTeeTypeRequest{}, &aapb.GetTeeTypeResponse{}},
		{"GetAdditionalTees", &aapb.GetAdditionalTeesRequest{}, &aapb.GetAdditionalTeesResponse{}},
	} {
		if err := c.Call(ctx, svc, m.method, m.req, m.resp); err != nil {
			t.Errorf("/%s/%s: %v", svc, m.method, err)
		}
	}
	// GetToken without a token config fails in the service, not the router.
	err = c.Call(ctx, svc, "GetToken", &aapb.GetTokenRequest{TokenType: "kbs"}, &aapb.GetTokenResponse{})
	wantStatus(t, err, "[ERROR:attestation-agent] AA-KBC get token failed")
	err = c.Call(ctx, "attestation_agent.AttestationAgent", "GetTeeType", &aapb.GetTeeTypeRequest{}, &aapb.GetTeeTypeResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown service answered %v", err)
	}
}
