package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/fusefs/server"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// startForReadyz runs cfg in process until the test ends and waits until
// Run serves (/readyz's "serving" part, asked directly).
func startForReadyz(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	// Before Run, nothing is served: /readyz says so.
	if code, body := readyz(d, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]serving: not serving") {
		t.Errorf("before Run: /readyz = %d %q", code, body)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if !stopped {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
		d.Close()
	})
	for !d.ready.serving.Load() {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("Run stopped before serving: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return d
}

// readyz asks the handler as the metrics server routes it.
func readyz(d *Daemon, target string) (int, string) {
	mux := http.NewServeMux()
	d.handleHealth(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Code, rec.Body.String()
}

// TestReadyzGuest: a guest cocoond with the REST shim and the detached
// lazy FUSE server is ready once Run serves, over its metrics address;
// a removed snapshots socket or a lazy layer not mounted on the current
// server makes it unready, naming the part, while /healthz stays ok.
func TestReadyzGuest(t *testing.T) {
	cfg := serveConfig(t)
	cfg.Attestation.TEE = "sample"
	cfg.REST.Address = "127.0.0.1:0"
	cfg.MetricsAddress = "127.0.0.1:0"
	cfg.Lazy.Enable = true
	cfg.Lazy.Detached = true
	stateDir := filepath.Join(cfg.Root, lazyServerDir)
	t.Cleanup(func() {
		if err := server.Stop(stateDir, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	d := startForReadyz(t, cfg)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	base := "http://" + d.MetricsAddress()
	code, body := fetch(t, client, base+"/readyz?verbose")
	for _, part := range []string{"[+]serving ok", "[+]snapshots-socket ok", "[+]rest " + d.RESTAddress() + " ok", "[+]lazy-fuse-server ok", "\nok\n"} {
		if code != http.StatusOK || !strings.Contains(body, part) {
			t.Errorf("/readyz?verbose = %d %q, want 200 with %q", code, body, part)
		}
	}
	if code, body := fetch(t, client, base+"/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}

	d.ready.lazy.smu.Lock()
	d.ready.lazy.failed["/var/lib/cocoon/x"] = true
	d.ready.lazy.smu.Unlock()
	code, body = fetch(t, client, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]lazy-fuse-server: 1 lazy layers not mounted on the current server") || !strings.Contains(body, "[+]snapshots-socket ok") {
		t.Errorf("with a layer not mounted again: /readyz = %d %q", code, body)
	}
	d.ready.lazy.smu.Lock()
	delete(d.ready.lazy.failed, "/var/lib/cocoon/x")
	d.ready.lazy.smu.Unlock()

	if err := os.Remove(cfg.Address); err != nil {
		t.Fatal(err)
	}
	code, body = fetch(t, client, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]snapshots-socket: dial unix "+cfg.Address) || strings.Contains(body, "[-]lazy") {
		t.Errorf("without the socket file: /readyz = %d %q", code, body)
	}
	if code, body := fetch(t, client, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
}

// TestReadyzKataGuest: in kata-guest mode the ttRPC sockets are the parts.
func TestReadyzKataGuest(t *testing.T) {
	cfg := serveConfig(t)
	dir := filepath.Dir(cfg.Address)
	cfg.Mode = ModeKataGuest
	cfg.Attestation.TEE = "sample"
	cfg.REST.Address = "127.0.0.1:0"
	cfg.Kata.AASocket = "unix://" + filepath.Join(dir, "aa.sock")
	cfg.Kata.CDHSocket = "unix://" + filepath.Join(dir, "cdh.sock")
	d := startForReadyz(t, cfg)
	code, body := readyz(d, "/readyz?verbose")
	for _, part := range []string{"[+]ttrpc " + cfg.Kata.AASocket + " ok", "[+]ttrpc " + cfg.Kata.CDHSocket + " ok"} {
		if code != http.StatusOK || !strings.Contains(body, part) || strings.Contains(body, "snapshots") {
			t.Errorf("/readyz?verbose = %d %q, want 200 with %q", code, body, part)
		}
	}
	p, _ := ttrpcsock.SocketPath(cfg.Kata.CDHSocket)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(d, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]ttrpc "+cfg.Kata.CDHSocket+": dial unix "+p) {
		t.Errorf("without the CDH socket: /readyz = %d %q", code, body)
	}
}
