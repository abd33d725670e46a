package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestDaemonInProcess starts the whole daemon on temporary directories and
// loopback ports, talks to its snapshots API, REST API and metrics, stops
// it, and checks it left no goroutine, socket or listener behind.
func TestDaemonInProcess(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs last
	cfg := serveConfig(t)
	cfg.Attestation.TEE = "sample"
	cfg.REST.Address = "127.0.0.1:0"
	cfg.REST.Features = "all"
	cfg.MetricsAddress = "127.0.0.1:0"
	cfg.Lazy.Enable = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	restAddr, metricsAddr := d.RESTAddress(), d.MetricsAddress()

	checkSnapshotsAPI(t, cfg.Address)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if code, body := fetch(t, client, "http://"+restAddr+"/info"); code != 200 || body != `{"version":"dev","tee":"sample","feature":"all"}` {
		t.Errorf("/info = %d %s", code, body)
	}
	if code, body := fetch(t, client, "http://"+metricsAddr+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "cocoon_lazy_chunk_verify_failures_total") {
		t.Errorf("/metrics = %d %.200s", code, body)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.Address); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshots socket left behind: %v", err)
	}
	for _, addr := range []string{restAddr, metricsAddr} {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections", addr)
		}
	}
}

// checkSnapshotsAPI asks the health service and the snapshots service over
// the unix socket, as containerd's proxy plugin would.
func checkSnapshotsAPI(t *testing.T, socket string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", hr, err)
	}
	_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "cocoon", Key: "absent"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("stat of an absent snapshot: %v, want NotFound", err)
	}
}

func fetch(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
