package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
	"github.com/cocoon-cc/cocoon/e2e/internal/kataapi/cdhpb"
)

// modeKata is the kata-agent's path: the CDH's PullImage into a bundle.
const modeKata = "kata-pullimage"

// pullImageOnce starts a fresh cocoond in kata-guest mode (and a fresh
// work directory) and times one PullImage of im into a bundle over ttRPC,
// as the kata-agent calls it; nothing else runs (no containerd). The
// snapshotter-path runs ("cocoon") start fresh daemons too, so both pull
// into an empty layer store.
func pullImageOnce(ctx context.Context, parent *harness.Script, reg *harness.Registry, im *harness.Image, mode string, iteration int, verify bool, _ string) (r Run, err error) {
	s := harness.NewScript(fmt.Sprintf("bench-%s-%d", mode, iteration), true)
	defer func() {
		if err != nil {
			s.Fail()
		}
		s.Close()
	}()
	env, err := harness.New(s)
	if err != nil {
		return r, err
	}
	r = Run{Mode: mode, Iteration: iteration}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		KataGuest:          true,
		InsecureRegistries: []string{reg.Host},
		LogLevel:           "info",
		Config:             fmt.Sprintf("[attestation]\neventlog_dir = %q\nimage_security_dir = %q\n", env.Path("aael"), env.Path("image-security")),
		ExtraArgs:          []string{"--tee", "sample"},
	})
	if err != nil {
		return r, err
	}
	conn, err := env.DialTTRPC(ctx, cd.CDHSocket)
	if err != nil {
		return r, err
	}
	client := cdhpb.NewImagePullServiceClient(conn)
	bundle := env.Path("bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return r, err
	}
	// Flush the previous run's dirty pages so that their writeback does
	// not land in this run's time.
	syscall.Sync()
	mem := cd.Proc.SampleMemory(20 * time.Millisecond)
	cpuBefore := [2]float64{cpuSeconds(reg.Proc.PID()), cpuSeconds(cd.Proc.PID())}

	start := time.Now()
	reply, err := client.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: im.Ref, BundlePath: bundle})
	r.PullSec = time.Since(start).Seconds()
	r.RegistryCPUSec = cpuSeconds(reg.Proc.PID()) - cpuBefore[0]
	r.CocoondCPUSec = cpuSeconds(cd.Proc.PID()) - cpuBefore[1]
	st := mem.Stop()
	r.CocoondPeakRSS, r.CocoondHWM = st.PeakSampledRSS, st.FinalHWM
	if err != nil {
		return r, fmt.Errorf("PullImage: %w", err)
	}
	if reply.GetManifestDigest() != im.ManifestDigest {
		return r, fmt.Errorf("PullImage answered manifest %s, the registry has %s", reply.GetManifestDigest(), im.ManifestDigest)
	}
	if verify {
		// Not timed: the bundle's rootfs must hold the last layer's data.
		last := len(im.Manifest.Layers) - 1
		fi, err := os.Stat(filepath.Join(bundle, "rootfs", "data", fmt.Sprintf("layer%d", last), "random.bin"))
		if err != nil {
			return r, fmt.Errorf("the pulled bundle: %w", err)
		}
		parent.Logf("%s: the bundle's rootfs has /data/layer%d/random.bin of %d bytes", mode, last, fi.Size())
	}
	// The kata-agent unmounts the rootfs when it removes the container.
	if err := syscall.Unmount(filepath.Join(bundle, "rootfs"), 0); err != nil {
		return r, err
	}
	return r, nil
}
