package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDoctorKataHost runs the command as an operator would on a Kata
// node: containerd's configuration with cocoon's drop-in, cocoond's
// socket and its /readyz; then the same with the socket gone.
func TestDoctorKataHost(t *testing.T) {
	sock, _ := serveSnapshots(t, true)
	main := "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-qemu-tdx]\n  runtime_type = \"io.containerd.kata-qemu-tdx.v2\"\n"
	cfg := writeConfig(t, main, strings.ReplaceAll(fragment(t, "2", "kata-qemu-tdx"), testSocket, sock))
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) }))
	defer ready.Close()
	args := []string{"--mode", "kata-host", "--containerd-config", cfg, "--address", sock, "--runtime-handler", "kata-qemu-tdx",
		"--metrics-address", strings.TrimPrefix(ready.URL, "http://")}

	// The mount helper and mount.fuse, found in PATH as containerd finds them.
	bin := t.TempDir()
	for _, name := range []string{"nydus-overlayfs-cocoon", "mount.fuse"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin)

	var out bytes.Buffer
	if err := runDoctor(t.Context(), args, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"containerd-config", "cri-labels", "cri-snapshotter", "snapshots-socket", "mount-helper", "readiness"}
	if len(lines) != len(want) {
		t.Fatalf("kata-host runs %d checks, want %v:\n%s", len(lines), want, out.String())
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, "ok   "+want[i]+": ") {
			t.Errorf("line %d: %q, want ok %s", i, l, want[i])
		}
	}

	os.Remove(sock)
	out.Reset()
	err := runDoctor(t.Context(), append(args, "--json"), &out)
	if err == nil || err.Error() != "1 of 6 checks failed" {
		t.Fatalf("without the socket: %v", err)
	}
	var results []result
	if err := json.Unmarshal(out.Bytes(), &results); err != nil {
		t.Fatalf("--json output %q: %v", out.String(), err)
	}
	if r := results[3]; r.Check != "snapshots-socket" || r.Status != statusFail || !strings.Contains(r.Fix, "start cocoond") {
		t.Errorf("socket result %+v", r)
	}
}

// TestDoctorModes: each mode runs its own checks; bad flags are usage
// errors.
func TestDoctorModes(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent")
	for mode, want := range map[string]string{
		"guest":      "containerd-config cri-labels cri-snapshotter snapshots-socket fuse crypt-engine kbs readiness",
		"kata-host":  "containerd-config cri-labels cri-snapshotter snapshots-socket mount-helper readiness",
		"kata-guest": "aa-socket cdh-socket fuse crypt-engine kbs readiness",
	} {
		o := doctorOptions{}
		if err := o.parse([]string{"--mode", mode, "--containerd-config", absent, "--address", absent, "--aa-socket", "unix://" + absent, "--cdh-socket", "unix://" + absent}); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range o.plan() {
			names = append(names, c(t.Context()).Check)
		}
		if got := strings.Join(names, " "); got != want {
			t.Errorf("--mode %s runs %q, want %q", mode, got, want)
		}
	}
	for _, args := range [][]string{{"--mode", "host"}, {"extra"}} {
		if err := runDoctor(t.Context(), args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
