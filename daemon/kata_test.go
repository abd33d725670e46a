package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/kata/api/aapb"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// TestServices: the mode picks what is served unless serve says; bad
// modes, services and sockets are refused naming the key.
func TestServices(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(*Config)
		want   []string
		errKey string
	}{
		{"guest", func(*Config) {}, []string{ServeSnapshotter}, ""},
		{"guest with REST", func(c *Config) { c.REST.Address = "127.0.0.1:8006" }, []string{ServeSnapshotter, ServeREST}, ""},
		{"kata-guest", func(c *Config) { c.Mode = ModeKataGuest; c.Address = "" }, []string{ServeAA, ServeCDH, ServeREST}, ""},
		{"serve overrides", func(c *Config) { c.Mode = ModeKataGuest; c.Serve = []string{ServeCDH, ServeSnapshotter} }, []string{ServeCDH, ServeSnapshotter}, ""},
		{"unknown mode", func(c *Config) { c.Mode = "kata" }, nil, "mode:"},
		{"unknown service", func(c *Config) { c.Serve = []string{"nydus"} }, nil, "serve:"},
		{"service twice", func(c *Config) { c.Serve = []string{ServeAA, ServeAA} }, nil, "serve:"},
		{"snapshotter without address", func(c *Config) { c.Address = "" }, nil, "address:"},
		{"socket not unix://", func(c *Config) { c.Mode = ModeKataGuest; c.Kata.CDHSocket = "/run/cdh.sock" }, nil, "kata.cdh_socket:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Default()
			c.edit(&cfg)
			err := cfg.Validate()
			if c.errKey != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.errKey) {
					t.Fatalf("Validate = %v, want an error naming %s", err, c.errKey)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{ServeSnapshotter, ServeAA, ServeCDH, ServeREST} {
				want := false
				for _, w := range c.want {
					want = want || w == s
				}
				if cfg.Serves(s) != want {
					t.Errorf("Serves(%s) = %v, want %v", s, !want, want)
				}
			}
		})
	}
}

// TestKataGuestInProcess runs the daemon as a Kata guest's AA and CDH:
// both ttRPC sockets answer with upstream's method names (the AA with the
// sample TEE, the CDH's refusals in upstream's error class), the REST shim
// shares the AA, no snapshots socket exists, and Close removes the sockets
// and leaves no goroutine behind.
func TestKataGuestInProcess(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	cfg := serveConfig(t)
	dir := filepath.Dir(cfg.Address)
	cfg.Mode = ModeKataGuest
	cfg.Attestation.TEE = "sample"
	cfg.REST.Address = "127.0.0.1:0"
	cfg.Kata.AASocket = "unix://" + filepath.Join(dir, "aa", "aa.sock")
	cfg.Kata.CDHSocket = "unix://" + filepath.Join(dir, "cdh.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	aaConn, err := ttrpcsock.Dial(ctx, cfg.Kata.AASocket)
	if err != nil {
		t.Fatal(err)
	}
	tee, err := aapb.NewAttestationAgentServiceClient(aaConn).GetTeeType(ctx, &aapb.GetTeeTypeRequest{})
	if err != nil || tee.GetTee() != "sample" {
		t.Errorf("GetTeeType = %v, %v", tee, err)
	}
	aaConn.Close()
	cdhConn, err := ttrpcsock.Dial(ctx, cfg.Kata.CDHSocket)
	if err != nil {
		t.Fatal(err)
	}
	// No KBS is configured: the resource request fails as upstream's CDH
	// fails, and a relative bundle path is refused before anything is fetched.
	_, err = cdhpb.NewGetResourceServiceClient(cdhConn).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/key/1"})
	checkCDHError(t, err, "[CDH] [ERROR]: Get Resource failed")
	_, err = cdhpb.NewImagePullServiceClient(cdhConn).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: "127.0.0.1:1/x:y", BundlePath: "relative"})
	checkCDHError(t, err, "[CDH] [ERROR]: Image Pull error")
	cdhConn.Close()
	if _, err := os.Stat(cfg.Address); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a kata guest serves the snapshots socket: %v", err)
	}
	if d.RESTAddress() == "" {
		t.Error("the REST shim is not served")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{cfg.Kata.AASocket, cfg.Kata.CDHSocket} {
		p, _ := ttrpcsock.SocketPath(uri)
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind: %v", p, err)
		}
	}
	if c, err := net.Dial("tcp", d.RESTAddress()); err == nil {
		c.Close()
		t.Error("the REST shim still accepts connections")
	}
}

func checkCDHError(t *testing.T, err error, prefix string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Internal || !strings.HasPrefix(st.Message(), prefix) {
		t.Errorf("error %v, want INTERNAL %q...", err, prefix)
	}
}
