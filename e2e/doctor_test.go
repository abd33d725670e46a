package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// doctorResult is one line of `cocoonctl doctor --json`.
type doctorResult struct {
	Check, Status, Finding, Fix string
}

// runDoctor runs `cocoonctl doctor --json args...` and returns its results
// by check and its exit status.
func runDoctor(t *testing.T, ctx context.Context, env *harness.Env, args ...string) (map[string]doctorResult, int) {
	t.Helper()
	bin, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"doctor", "--json", "--timeout", "20s"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if exit, isExit := errors.AsType[*exec.ExitError](err); isExit {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var list []doctorResult
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("doctor printed %q (stderr %q): %v", out, stderr.String(), err)
	}
	byCheck := map[string]doctorResult{}
	for _, r := range list {
		byCheck[r.Check] = r
		t.Logf("%s %s: %s (fix: %s)", r.Status, r.Check, r.Finding, r.Fix)
	}
	return byCheck, code
}

// wantDoctor checks each named check's status (one of the listed, "|"
// separated) and that a fail comes with a fix.
func wantDoctor(t *testing.T, got map[string]doctorResult, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("doctor ran %d checks, want %d (%v)", len(got), len(want), want)
	}
	for check, statuses := range want {
		r, found := got[check]
		if !found || !strings.Contains("|"+statuses+"|", "|"+r.Status+"|") {
			t.Errorf("%s: %+v, want %s", check, r, statuses)
		}
		if r.Status == "fail" && r.Fix == "" {
			t.Errorf("%s fails without a fix: %+v", check, r)
		}
	}
}

// TestDoctor runs cocoonctl doctor as an operator would on a guest: the
// containerd configuration the running containerd loaded (written with
// cocoonctl containerd-config), cocoond after a pull through it, and an
// attestation to cocoon-kbs. Everything passes (the sample TEE warns, and
// so does a machine without device-mapper); once cocoond is killed, its
// stale socket and /readyz fail and doctor exits 1. A Kata guest's
// cocoond is checked through its AA and CDH sockets.
func TestDoctor(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := startCocoonStack(t, ctx, env)
	im, _ := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/doctor", imageOptions{})
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref); err != nil {
		t.Fatal(err)
	}
	args := []string{"--mode", "guest", "--containerd-config", s.ctrd.Config, "--address", s.cocoond.Address,
		"--metrics-address", s.cocoond.MetricsAddr, "--kbs-url", kbs.URL, "--tee", "sample"}
	guest := map[string]string{"containerd-config": "ok", "cri-labels": "ok", "cri-snapshotter": "ok", "snapshots-socket": "ok",
		"fuse": "ok", "crypt-engine": "ok|warn", "kbs": "warn", "readiness": "ok"}
	got, code := runDoctor(t, ctx, env, args...)
	wantDoctor(t, got, guest)
	if code != 0 || !strings.Contains(got["snapshots-socket"].Finding, "(2 snapshots)") {
		t.Errorf("exit status %d, socket %+v", code, got["snapshots-socket"])
	}

	if err := s.cocoond.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	got, code = runDoctor(t, ctx, env, args...)
	guest["snapshots-socket"], guest["readiness"] = "fail", "fail"
	wantDoctor(t, got, guest)
	if code != 1 || !strings.Contains(got["snapshots-socket"].Fix, "stale socket") {
		t.Errorf("with cocoond killed: exit status %d, socket %+v", code, got["snapshots-socket"])
	}

	kg, err := env.StartCocoond(ctx, harness.CocoondOptions{Name: "kata", KataGuest: true, ExtraArgs: []string{"--tee", "sample"}})
	if err != nil {
		t.Fatal(err)
	}
	got, code = runDoctor(t, ctx, env, "--mode", "kata-guest", "--aa-socket", "unix://"+kg.AASocket, "--cdh-socket", "unix://"+kg.CDHSocket,
		"--metrics-address", kg.MetricsAddr, "--kbs-url", kbs.URL, "--tee", "sample")
	wantDoctor(t, got, map[string]string{"aa-socket": "ok", "cdh-socket": "ok", "fuse": "ok", "crypt-engine": "ok|warn", "kbs": "warn", "readiness": "ok"})
	if code != 0 || !strings.Contains(got["aa-socket"].Finding, "GetTeeType: sample") {
		t.Errorf("kata-guest: exit status %d, aa %+v", code, got["aa-socket"])
	}
}
