package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/restapi"
)

func freeAddr(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startKBSOnly runs a development KBS (allow-all policy, sample verifier)
// holding default/key/1 and returns its URL; its repository is kbsRepos[url].
func startKBSOnly(t *testing.T, verifiers ...attest.Verifier) string {
	t.Helper()
	if len(verifiers) == 0 {
		verifiers = []attest.Verifier{sample.NewVerifier()}
	}
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "default", "key"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "key", "1"), []byte("resource-bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := server.New(server.Options{Repository: repo, Policy: server.AllowAllPolicy, Verifiers: verifiers})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(ks)
	t.Cleanup(func() { hs.Close(); ks.Close() })
	kbsRepos[hs.URL] = repo
	return hs.URL
}

var kbsRepos = map[string]string{}

// runServe runs cocoond's serve until the test ends and waits for its REST
// API (cfg.REST.Address).
func runServe(t *testing.T, cfg Config, features restapi.Features) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, features) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", cfg.REST.Address)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("REST API did not come up on %s: %v", cfg.REST.Address, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDaemon runs cocoond's serve with the sample attester, a development
// KBS holding one resource, and the REST API on restAddr.
func startDaemon(t *testing.T, restAddr string, features restapi.Features) (kbsRepo string) {
	t.Helper()
	url := startKBSOnly(t)
	cfg := serveConfig(t)
	cfg.REST.Address = restAddr
	cfg.Attestation.TEE = "sample"
	cfg.Attestation.KBSURL = url
	runServe(t, cfg, features)
	return kbsRepos[url]
}

func get(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRESTAgainstRunningDaemon(t *testing.T) {
	addr := freeAddr(t, "127.0.0.1")
	repo := startDaemon(t, addr, restapi.FeatureAll)
	base := "http://" + addr

	code, body := get(t, "GET", base+"/info", "")
	if code != 200 || body != `{"version":"dev","tee":"sample","feature":"all"}` {
		t.Errorf("/info = %d %s", code, body)
	}
	code, body = get(t, "GET", base+"/aa/evidence?runtime_data="+base64.RawURLEncoding.EncodeToString([]byte("nonce!"))+"&encoding=base64", "")
	var ev struct{ SVN, ReportData string }
	if err := json.Unmarshal([]byte(strings.ReplaceAll(body, "report_data", "ReportData")), &ev); err != nil {
		t.Fatal(err)
	}
	if rd, _ := base64.StdEncoding.DecodeString(ev.ReportData); code != 200 || string(rd) != "nonce!" {
		t.Errorf("/aa/evidence = %d %s", code, body)
	}
	code, body = get(t, "GET", base+"/aa/token?token_type=kbs", "")
	if code != 200 || !strings.Contains(body, `"tee_keypair":"-----BEGIN PRIVATE KEY-----`) {
		t.Errorf("/aa/token = %d %.80s", code, body)
	}
	code, body = get(t, "GET", base+"/cdh/resource/default/key/1", "")
	if code != 200 || body != "resource-bytes" {
		t.Errorf("/cdh/resource = %d %q", code, body)
	}
	// A resource written into the running KBS is served (no restart).
	if err := os.MkdirAll(filepath.Join(repo, "default", "key"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "key", "2"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body = get(t, "GET", base+"/cdh/resource/default/key/2", ""); code != 200 || body != "new" {
		t.Errorf("new resource = %d %q", code, body)
	}
	if code, _ = get(t, "GET", base+"/cdh/resource/default/key/absent", ""); code != 500 {
		t.Errorf("missing resource = %d", code)
	}
	// The sample attester cannot measure at runtime.
	code, body = get(t, "POST", base+"/aa/aael", `{"domain":"d","operation":"o","content":"c"}`)
	if code != 200 || body != `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}` {
		t.Errorf("/aa/aael = %d %s", code, body)
	}
}

func TestRESTFeatureGateOnDaemon(t *testing.T) {
	addr := freeAddr(t, "127.0.0.1")
	startDaemon(t, addr, restapi.FeatureResource)
	if code, body := get(t, "GET", "http://"+addr+"/aa/evidence?runtime_data=x", ""); code != 404 || body != "Attestation Feature Not Enabled" {
		t.Errorf("/aa with resource feature = %d %q", code, body)
	}
}

func TestRestFeaturesPrecedence(t *testing.T) {
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(cmdline, []byte("console=hvc0 agent.guest_components_rest_api=attestation quiet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flag, cmdline, config string
		want                  restapi.Features
	}{
		{"all", cmdline, "resource", restapi.FeatureAll},
		{"", cmdline, "all", restapi.FeatureAttestation},
		{"", "/nonexistent", "all", restapi.FeatureAll},
		{"", "/nonexistent", "", restapi.FeatureResource},
	} {
		got, _, err := RESTFeatures(tc.flag, tc.cmdline, tc.config)
		if err != nil || got != tc.want {
			t.Errorf("%+v: %v %v", tc, got, err)
		}
	}
	bad := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(bad, []byte("agent.guest_components_rest_api=none"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, src, err := RESTFeatures("", bad, ""); err == nil || src != "kernel command line" {
		t.Errorf("invalid cmdline value accepted: %v", err)
	}
}

// TestRESTRefusesNonLoopbackPeer reaches the REST API from a network
// namespace over a veth pair, so the peer address is really not loopback.
func TestRESTRefusesNonLoopbackPeer(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2 (ip) is required: apt-get install iproute2")
	}
	ns := fmt.Sprintf("cocoon-rest-%d", os.Getpid())
	hostIf, nsIf := fmt.Sprintf("crh%d", os.Getpid()%100000), fmt.Sprintf("crn%d", os.Getpid()%100000)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	cleanup := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Errorf("cleanup %v: %v: %s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { cleanup("ip", "netns", "del", ns) })
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	t.Cleanup(func() { cleanup("ip", "link", "del", hostIf) })
	run("ip", "link", "set", nsIf, "netns", ns)
	run("ip", "addr", "add", "10.213.77.1/30", "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	run("ip", "netns", "exec", ns, "ip", "addr", "add", "10.213.77.2/30", "dev", nsIf)
	run("ip", "netns", "exec", ns, "ip", "link", "set", nsIf, "up")

	addr := freeAddr(t, "10.213.77.1")
	startDaemon(t, addr, restapi.FeatureAll)
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestHelperHTTPGet$")
	cmd.Env = append(os.Environ(), "COCOON_HELPER_URL=http://"+addr+"/info")
	out, _ := cmd.CombinedOutput() // the helper prints the status and body
	if !strings.Contains(string(out), "403 Forbidden|Forbidden") {
		t.Errorf("request from the namespace: %s", out)
	}
	// From the host the peer address is 10.213.77.1: not loopback either.
	if code, _ := get(t, "GET", "http://"+addr+"/info", ""); code != 403 {
		t.Errorf("host-side non-loopback peer = %d, want 403", code)
	}
}

// TestHelperHTTPGet is run by TestRESTRefusesNonLoopbackPeer inside the
// network namespace; it does nothing in a normal test run.
func TestHelperHTTPGet(t *testing.T) {
	url := os.Getenv("COCOON_HELPER_URL")
	if url == "" {
		return
	}
	resp, err := http.Get(url)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s|%s\n", resp.Status, b)
}
