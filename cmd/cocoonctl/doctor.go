package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

func init() {
	register(command{
		name:    "doctor",
		summary: "check a node or guest for what cocoon needs, one line per check with what to change",
		run:     func(ctx context.Context, args []string) error { return runDoctor(ctx, args, os.Stdout) },
	})
}

// Modes doctor checks, as cocoond's --mode names them.
const (
	doctorModeGuest     = "guest"      // containerd in a confidential VM
	doctorModeKataHost  = "kata-host"  // a Kubernetes node running Kata pods
	doctorModeKataGuest = "kata-guest" // the kata-agent's CDH and AA in a Kata guest
)

// Check outcomes. A fail makes doctor exit non-zero; skip means the check
// had nothing to look at (its finding says what would enable it).
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "fail"
	statusSkip = "skip"
)

// result is one check's line: "<status> <check>: <finding>; fix: <fix>".
type result struct {
	Check   string `json:"check"`
	Status  string `json:"status"`
	Finding string `json:"finding"`
	Fix     string `json:"fix,omitempty"`
}

func (r result) String() string {
	s := fmt.Sprintf("%-4s %s: %s", r.Status, r.Check, r.Finding)
	if r.Fix != "" {
		s += "; fix: " + r.Fix
	}
	return s
}

func ok(check, finding string) result        { return result{check, statusOK, finding, ""} }
func warn(check, finding, fix string) result { return result{check, statusWarn, finding, fix} }
func fail(check, finding, fix string) result { return result{check, statusFail, finding, fix} }
func skip(check, finding string) result      { return result{check, statusSkip, finding, ""} }

// doctorOptions are doctor's flags.
type doctorOptions struct {
	mode             string
	containerdConfig string
	address          string
	snapshotter      string
	runtimeHandler   string
	kataMountType    string
	metricsAddress   string
	cdhSocket        string
	aaSocket         string
	kbs              kbsFlags
	timeout          time.Duration
	json             bool
}

func (o *doctorOptions) parse(args []string) error {
	fs := newFlags("doctor")
	fs.StringVar(&o.mode, "mode", doctorModeGuest, "what this machine is: guest, kata-host or kata-guest (cocoond's --mode)")
	fs.StringVar(&o.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's configuration `file` (its imports are read too)")
	fs.StringVar(&o.address, "address", "/run/cocoon/cocoon.sock", "cocoond's snapshots API `socket`")
	fs.StringVar(&o.snapshotter, "snapshotter", "cocoon", "the proxy plugin's `name` in containerd")
	fs.StringVar(&o.runtimeHandler, "runtime-handler", "", "the CRI runtime `handler` whose pods use cocoon (default: the default snapshotter is checked)")
	fs.StringVar(&o.kataMountType, "kata-mount-type", snapshotter.DefaultKataMountType, "kata-host rootfs mount `type` (cocoond.toml [snapshotter] kata_mount_type)")
	fs.StringVar(&o.metricsAddress, "metrics-address", "", "cocoond's metrics `host:port`, to ask its /readyz")
	fs.StringVar(&o.cdhSocket, "cdh-socket", config.DefaultCDHSocket, "the Confidential Data Hub's ttRPC `URI` (kata-guest)")
	fs.StringVar(&o.aaSocket, "aa-socket", config.DefaultAASocket, "the Attestation Agent's ttRPC `URI` (kata-guest)")
	registerKBSFlags(fs, &o.kbs)
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "time allowed for each check")
	fs.BoolVar(&o.json, "json", false, "print the results as a JSON array")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	switch o.mode {
	case doctorModeGuest, doctorModeKataHost, doctorModeKataGuest:
		return nil
	}
	return fmt.Errorf("--mode %q: want guest, kata-host or kata-guest: %w", o.mode, errUsage)
}

// check is one check to run; checks run in order, each bounded by
// --timeout.
type check func(ctx context.Context) result

// plan lists the checks --mode calls for: a Kata host needs containerd
// wired to cocoon's socket and the mount helper; a guest running
// containerd needs containerd wired to the socket, FUSE, an encryption
// engine and the KBS; a Kata guest needs the kata-agent's sockets, FUSE,
// an encryption engine and the KBS. /readyz is asked last in every mode.
func (o *doctorOptions) plan() []check {
	var cs []check
	if o.mode != doctorModeKataGuest {
		cs = append(cs, containerdChecks(o)...)
		cs = append(cs, func(ctx context.Context) result { return checkSnapshotsSocket(ctx, o.address, o.snapshotter) })
		if o.mode == doctorModeKataHost {
			cs = append(cs, func(context.Context) result { return checkMountHelper(o.kataMountType, exec.LookPath) })
		}
	} else {
		cs = append(cs,
			func(ctx context.Context) result { return checkAASocket(ctx, o.aaSocket) },
			func(ctx context.Context) result { return checkCDHSocket(ctx, o.cdhSocket) })
	}
	if o.mode != doctorModeKataHost {
		cs = append(cs,
			func(ctx context.Context) result { return checkFUSE(ctx, fuseDevice) },
			func(context.Context) result { return checkCryptEngine(hostCryptProbes()) },
			func(ctx context.Context) result { return checkKBS(ctx, o.kbs) })
	}
	return append(cs, func(ctx context.Context) result { return checkReadiness(ctx, o.metricsAddress) })
}

func runDoctor(ctx context.Context, args []string, out io.Writer) error {
	var o doctorOptions
	if err := o.parse(args); err != nil {
		return err
	}
	var results []result
	failed := 0
	for _, c := range o.plan() {
		cctx, cancel := context.WithTimeout(ctx, o.timeout)
		r := c(cctx)
		cancel()
		results = append(results, r)
		if r.Status == statusFail {
			failed++
		}
		if !o.json {
			if _, err := fmt.Fprintln(out, r); err != nil {
				return err
			}
		}
	}
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(results))
	}
	return nil
}
