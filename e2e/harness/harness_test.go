package harness_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestCleanupLeavesNothingBehind starts a registry and containerd, runs a
// container in the background, then runs the cleanup and checks that no
// process, mount or file of the run is left. In the second case containerd
// is killed first, so the ctr-based teardown cannot work and the shim and
// its container must be found and killed by PID.
func TestCleanupLeavesNothingBehind(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip(harness.ErrNotRoot)
	}
	for _, killContainerd := range []bool{false, true} {
		name := "graceful"
		if killContainerd {
			name = "containerd-killed"
		}
		t.Run(name, func(t *testing.T) {
			s := harness.NewScript(t.Name(), true)
			defer s.Close() // if the test fails half way
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			env, err := harness.New(s)
			if err != nil {
				t.Fatal(err)
			}
			reg, err := env.StartRegistry(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{LogLevel: "info"})
			if err != nil {
				t.Fatal(err)
			}
			bb, err := harness.BusyboxLayer()
			if err != nil {
				t.Fatal(err)
			}
			layer := env.Path("busybox.tar")
			if err := bb.WriteFile(layer, harness.Uncompressed); err != nil {
				t.Fatal(err)
			}
			im, err := reg.Push(ctx, harness.ImageSpec{Repo: "harness/busybox", Tag: "v1", Layers: []string{layer}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", im.Ref); err != nil {
				t.Fatal(err)
			}
			id := "harness-cleanup-" + strconv.Itoa(os.Getpid()) + "-" + name
			if _, err := ctrd.Ctr(ctx, "run", "-d", im.Ref, id, "/bin/sleep", "600"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(harness.ShimSocketPath(ctrd.Address, "default", id)); err != nil {
				t.Fatalf("the shim socket is not where ShimSocketPath says: %v", err)
			}
			pids := []int{reg.Proc.PID(), ctrd.Proc.PID()}
			taskPID := taskPID(t, ctx, ctrd, id)
			pids = append(append(pids, taskPID), shimPIDs(ctrd.Address)...)
			if len(pids) < 4 {
				t.Fatalf("expected registry, containerd, task and shim PIDs, got %v", pids)
			}
			mounts, err := harness.MountsUnder(env.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(mounts) == 0 {
				t.Fatalf("the running container has no mount under %s", env.Dir)
			}
			if killContainerd {
				if err := ctrd.Proc.Kill(); err != nil {
					t.Fatal(err)
				}
			}

			s.Close()

			for _, pid := range pids {
				if alive(pid) {
					t.Errorf("pid %d (%s) survived the cleanup", pid, cmdline(pid))
				}
			}
			if _, err := os.Stat(env.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("work directory %s survived the cleanup: %v", env.Dir, err)
			}
			if left, _ := harness.MountsUnder(env.Dir); len(left) > 0 {
				t.Errorf("mounts survived the cleanup: %v", left)
			}
			for _, p := range []string{
				"/run/containerd/runc/default/" + id,
				harness.ShimSocketPath(ctrd.Address, "default", id),
				"/sys/fs/cgroup/memory/default/" + id, // cgroup v1 (this machine)
				"/sys/fs/cgroup/default/" + id,        // cgroup v2
			} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s survived the cleanup: %v", p, err)
				}
			}
		})
	}
}

func taskPID(t *testing.T, ctx context.Context, c *harness.Containerd, id string) int {
	t.Helper()
	out, err := c.Ctr(ctx, "tasks", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("tasks ls line %q: %v", line, err)
			}
			return pid
		}
	}
	t.Fatalf("task %s not in `ctr tasks ls`:\n%s", id, out)
	return 0
}

// shimPIDs finds the shims started for the containerd at address.
func shimPIDs(address string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c := cmdline(pid)
		if strings.Contains(c, "containerd-shim") && strings.Contains(c, address) {
			out = append(out, pid)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z")
}
