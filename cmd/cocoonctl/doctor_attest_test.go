package main

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/kata/aa"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// startTestKBS serves a cocoon-kbs that verifies the given TEEs' evidence.
func startTestKBS(t *testing.T, verifiers ...attest.Verifier) string {
	t.Helper()
	srv, err := server.New(server.Options{Repository: t.TempDir(), Policy: server.AllowAllPolicy, Verifiers: verifiers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestKBSCheck(t *testing.T) {
	saved := newAttester
	t.Cleanup(func() { newAttester = saved })
	newAttester = func(string) (attest.Attester, error) { return sample.NewAttester(), nil }

	wantResult(t, checkKBS(t.Context(), kbsFlags{}), statusSkip, "no --kbs-url")
	accepting := startTestKBS(t, sample.NewVerifier())
	wantResult(t, checkKBS(t.Context(), kbsFlags{url: accepting}), statusWarn, "attested sample evidence and issued a token valid until ")
	// A KBS without a verifier for the sample TEE refuses the evidence.
	refusing := startTestKBS(t)
	wantResult(t, checkKBS(t.Context(), kbsFlags{url: refusing}), statusFail, "refused the sample evidence")
	wantResult(t, checkKBS(t.Context(), kbsFlags{url: accepting, cert: filepath.Join(t.TempDir(), "absent.pem")}), statusFail, "read --cert")
}

// listenTTRPC serves register's services on a fresh socket.
func listenTTRPC(t *testing.T, register func(*ttrpc.Server)) string {
	t.Helper()
	uri := "unix://" + filepath.Join(t.TempDir(), "s.sock")
	srv, err := ttrpcsock.Listen(context.Background(), uri, register)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return uri
}

func TestAASocketCheck(t *testing.T) {
	ag, err := agent.New(agent.Options{Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	uri := listenTTRPC(t, aa.New(ag).Register)
	wantResult(t, checkAASocket(t.Context(), uri), statusOK, "answers GetTeeType: sample")
	other := listenTTRPC(t, func(*ttrpc.Server) {})
	wantResult(t, checkAASocket(t.Context(), other), statusFail, "GetTeeType")
	wantResult(t, checkAASocket(t.Context(), "unix://"+filepath.Join(t.TempDir(), "absent.sock")), statusFail, "--aa-socket")
}

// refusingCDH answers UnsealSecret as kata/cdh does for a string that is
// no sealed secret (kata/cdh is not linked into cocoonctl: its keyprovider
// proto clashes with ocicrypt's, which the keyprovider command links in).
type refusingCDH struct{}

func (refusingCDH) UnsealSecret(context.Context, *cdhpb.UnsealSecretInput) (*cdhpb.UnsealSecretOutput, error) {
	return nil, status.Error(codes.Internal, "[CDH] [ERROR]: Unseal Secret failed: not a sealed secret")
}

func TestCDHSocketCheck(t *testing.T) {
	uri := listenTTRPC(t, func(s *ttrpc.Server) { cdhpb.RegisterSealedSecretServiceService(s, refusingCDH{}) })
	wantResult(t, checkCDHSocket(t.Context(), uri), statusOK, "answers UnsealSecret")
	ag, err := agent.New(agent.Options{Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	// The AA's socket given as the CDH's.
	wrong := listenTTRPC(t, aa.New(ag).Register)
	wantResult(t, checkCDHSocket(t.Context(), wrong), statusFail, "does not serve the CDH's SealedSecretService")
	wantResult(t, checkCDHSocket(t.Context(), "unix://"+filepath.Join(t.TempDir(), "absent.sock")), statusFail, "--cdh-socket")
}
