package ttrpcsock_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-cc/cocoon/kata/api/aapb"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/confidential-containers/cdh.sock": "/run/confidential-containers/cdh.sock",
		"unix:///run//x/../cdh.sock":                   "/run/cdh.sock",
	} {
		got, err := ttrpcsock.SocketPath(in)
		if err != nil || got != want {
			t.Errorf("SocketPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"/run/cdh.sock", "unix://run/cdh.sock", "tcp://127.0.0.1:1", "vsock://3:1", ""} {
		if _, err := ttrpcsock.SocketPath(in); err == nil {
			t.Errorf("SocketPath(%q) accepted", in)
		}
	}
}

type tees struct {
	aapb.AttestationAgentServiceService
}

func (tees) GetTeeType(context.Context, *aapb.GetTeeTypeRequest) (*aapb.GetTeeTypeResponse, error) {
	return &aapb.GetTeeTypeResponse{Tee: "sample"}, nil
}

func TestListenServesAndCleansUp(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a", "b", "aa.sock")
	// A stale socket from a previous run is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()

	srv, err := ttrpcsock.Listen(context.Background(), "unix://"+sock, func(s *ttrpc.Server) {
		aapb.RegisterAttestationAgentServiceService(s, tees{})
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	if ents, _ := os.ReadDir(filepath.Dir(sock)); len(ents) != 1 {
		t.Fatalf("socket directory holds %v, want only the socket", ents)
	}
	c, err := ttrpcsock.Dial(context.Background(), "unix://"+srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := aapb.NewAttestationAgentServiceClient(c).GetTeeType(context.Background(), &aapb.GetTeeTypeRequest{})
	if err != nil || got.GetTee() != "sample" {
		t.Fatalf("GetTeeType = %v, %v", got, err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestListenRefusesAFileInTheWay(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cdh.sock")
	if err := os.WriteFile(p, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ttrpcsock.Listen(context.Background(), "unix://"+p)
	if err == nil || !strings.Contains(err.Error(), "in the way") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "not a socket" {
		t.Fatal("the file was touched")
	}
}
