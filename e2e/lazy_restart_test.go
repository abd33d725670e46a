package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestLazyPullSurvivesCocoondKill, for a plain and an encrypted eStargz
// image pulled lazily (no background completion: every read stays remote):
// a container runs; cocoond is killed with SIGKILL; the container then
// reads a range of a file never read before, which the surviving lazy
// FUSE server fetches from the registry (the content checked); cocoond
// restarts on the same root, mounts its committed lazy layers again
// through the same server without fetching a byte of the big layers, the
// running container reads on, and a new container of the same image
// starts and reads. At the end the lazy server is stopped and no lazy
// mount is left.
func TestLazyPullSurvivesCocoondKill(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 15*time.Minute)
	s := startLazyStack(t, ctx, env)
	server := s.cocoond.LazyServerPID()
	if server == 0 {
		t.Fatalf("cocoond with [lazy] enabled started no lazy FUSE server:\n%s", s.cocoond.Proc.Log())
	}
	var runs []running
	for _, encrypted := range []bool{false, true} {
		name := lazyVariant(encrypted)
		im, msg := s.pushESGZImage(t, ctx, "e2e/lazykill-"+name, encrypted)
		r := running{lazyRun: lazyRun{name: name, ref: s.proxyRef(im.Ref), msg: msg, big: im.Manifest.Layers[1].Digest},
			id: containerID(t, "sleeper-"+name), size: im.Manifest.Layers[1].Size}
		if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, r.ref); err != nil {
			t.Fatalf("lazy pull of the %s image: %v", name, err)
		}
		assertNoLayerBlobs(t, ctx, s.ctrd, im)
		if _, err := s.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", snapshotterName, r.ref, r.id, "/bin/sleep", "600"); err != nil {
			t.Fatalf("starting the %s container: %v", name, err)
		}
		t.Cleanup(func() { removeTask(s.ctrd, r.id) })
		runs = append(runs, r)
	}
	if !strings.Contains(s.cocoond.Proc.Log(), "lazy layer mounted and committed") {
		t.Fatalf("cocoond did not mount the layers lazily:\n%s", s.cocoond.Proc.Log())
	}

	oldPID := s.cocoond.Proc.PID()
	if err := s.cocoond.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed cocoond pid %d with SIGKILL; lazy FUSE server pid %d", oldPID, server)
	if pid := s.cocoond.LazyServerPID(); pid != server {
		t.Fatalf("the lazy FUSE server (pid %d) did not survive cocoond's SIGKILL (now %d)", server, pid)
	}
	// With cocoond dead, each running container reads 2 MiB of /data/big2
	// nobody read before: the surviving server fetches and verifies it.
	for _, r := range runs {
		before := s.proxy.Forwarded(r.big)
		readRange(t, ctx, s, r.id, "killed", "/data/big2", 2, 8, 2)
		fetched := s.proxy.Forwarded(r.big) - before
		t.Logf("%s: with cocoond dead the server fetched %d bytes of the big layer for a 2 MiB read", r.name, fetched)
		if fetched < 2<<20 {
			t.Errorf("%s: the registry served %d bytes for a 2 MiB read never made before; want it fetched lazily", r.name, fetched)
		}
	}

	// Restart: the committed lazy layers are mounted again through the
	// same server, which already serves them: nothing is fetched.
	var before int64
	for _, r := range runs {
		before += s.proxy.Forwarded(r.big)
	}
	if err := s.cocoond.Start(ctx); err != nil {
		t.Fatalf("restarting cocoond on the same root: %v", err)
	}
	if n := strings.Count(s.cocoond.Proc.Log(), "committed lazy layer mounted again"); n < len(runs) {
		t.Errorf("restarted cocoond mounted %d committed lazy layers again, want at least %d:\n%s", n, len(runs), s.cocoond.Proc.Log())
	}
	if strings.Contains(s.cocoond.Proc.Log(), "layer key unwrapped") {
		t.Errorf("restarted cocoond unwrapped a layer key through the KBS to mount again a layer the server still serves:\n%s", s.cocoond.Proc.Log())
	}
	if pid := s.cocoond.LazyServerPID(); pid != server {
		t.Errorf("restarted cocoond replaced the lazy FUSE server %d by %d", server, pid)
	}
	var after int64
	for _, r := range runs {
		after += s.proxy.Forwarded(r.big)
	}
	waitSnapshotter(t, ctx, s.ctrd)
	m, err := s.cocoond.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rss := harness.MetricSum(m, "cocoon_lazy_server_process_resident_memory_bytes")
	t.Logf("restarted cocoond's /metrics: lazy FUSE server RSS %.1f MiB, cocoond RSS %.1f MiB",
		rss/(1<<20), harness.MetricSum(m, "process_resident_memory_bytes")/(1<<20))
	if rss <= 0 {
		t.Error("the restarted cocoond's /metrics has no lazy FUSE server metrics")
	}
	if after != before {
		t.Errorf("the restart made the registry serve %d bytes of the big layers; want none", after-before)
	}
	for _, r := range runs {
		readRange(t, ctx, s, r.id, "restarted", "/data/big1", 1, 20, 1)
		out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, r.ref, containerID(t, r.name+"-after"))
		if err != nil || !strings.Contains(out, r.msg) {
			t.Errorf("%s: new container after the restart printed %q, %v; want %q", r.name, out, err, r.msg)
		}
		fetched := s.proxy.Forwarded(r.big)
		t.Logf("%s: the registry served %d of the big layer's %d bytes in all (%.2f%%)", r.name, fetched, r.size, 100*float64(fetched)/float64(r.size))
		if fetched*5 >= r.size {
			t.Errorf("%s: the registry served %d of %d bytes of the big layer; want a small fraction (no re-pull)", r.name, fetched, r.size)
		}
	}

	s.serverCrash(t, ctx, server, runs[0].id, runs)

	for _, r := range runs {
		removeTask(s.ctrd, r.id)
	}
	// cocoond first: while it runs it would start a new server.
	if err := s.cocoond.Proc.Stop(15 * time.Second); err != nil {
		t.Error(err)
	}
	if err := s.cocoond.StopLazyServer(15 * time.Second); err != nil {
		t.Error(err)
	}
}

// running is a container TestLazyPullSurvivesCocoondKill keeps running.
type running struct {
	lazyRun
	id   string
	size int64
}

// serverCrash kills the lazy FUSE server (pid) with SIGKILL: a read of
// the container id that reaches its dead mounts fails with ENOTCONN;
// cocoond notices, a new server starts and every lazy layer is mounted
// again on it, and new containers of each image start and read.
func (s *lazyStack) serverCrash(t *testing.T, ctx context.Context, pid int, id string, runs []running) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.deadMount(t, ctx, id, "crashed")
	want := 2 * len(runs) // busybox and the big layer of each image are lazy
	const again = "lazy layer mounted again on the new lazy FUSE server"
	for strings.Count(s.cocoond.Proc.Log(), again) < want {
		select {
		case <-ctx.Done():
			t.Fatalf("cocoond did not mount the lazy layers again after the server died:\n%s", s.cocoond.Proc.Log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	next := s.cocoond.LazyServerPID()
	t.Logf("lazy FUSE server %d killed; server %d serves the %d lazy layers again", pid, next, want)
	if next == 0 || next == pid {
		t.Errorf("no new lazy FUSE server runs (pid %d)", next)
	}
	// The running container's overlay still holds the dead server's
	// mounts: it stays broken until it is restarted.
	s.deadMount(t, ctx, id, "crashed-after")
	for _, r := range runs {
		sid := containerID(t, r.name+"-crash")
		if _, err := s.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", snapshotterName, r.ref, sid, "/bin/sleep", "600"); err != nil {
			t.Fatalf("%s: container after the server crash: %v", r.name, err)
		}
		t.Cleanup(func() { removeTask(s.ctrd, sid) })
		readRange(t, ctx, s, sid, "new-server", "/data/big2", 2, 24, 1)
		out, err := s.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "msg", sid, "/bin/cat", "/data/message")
		if err != nil || !strings.Contains(out, r.msg) {
			t.Errorf("%s: /data/message after the server crash: %q, %v; want %q", r.name, out, err, r.msg)
		}
		removeTask(s.ctrd, sid)
	}
}

// deadMount checks that running a shell in container id fails with
// ENOTCONN: its lazy rootfs layers were served by a dead server.
func (s *lazyStack) deadMount(t *testing.T, ctx context.Context, id, tag string) {
	t.Helper()
	out, err := s.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", tag, id, "/bin/sh", "-c", "cat /data/message")
	msg := out
	if err != nil {
		msg += err.Error()
	}
	if !strings.Contains(strings.ToLower(msg), "transport endpoint is not connected") {
		t.Errorf("%s: a container on the dead server's mounts ran a shell: %q, %v; want ENOTCONN (transport endpoint is not connected)", tag, out, err)
		return
	}
	t.Logf("%s: the container on the dead server's mounts gets ENOTCONN", tag)
}

// readRange makes the running container id read count MiB of file from
// MiB skip (dd) and checks their SHA-256 against the bytes pushBigImage
// wrote there (file /data/bigN is harness.RandomReader(seed N)).
func readRange(t *testing.T, ctx context.Context, s *lazyStack, id, tag, file string, seed uint64, skip, count int64) {
	t.Helper()
	script := fmt.Sprintf("dd if=%s bs=1048576 skip=%d count=%d 2>/dev/null | sha256sum", file, skip, count)
	out, err := s.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", tag+"-"+strings.TrimPrefix(file, "/data/"), id, "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("exec in %s (%s): %v (%s)", id, tag, err, out)
	}
	want := rangeSHA256(t, seed, skip<<20, count<<20)
	if !strings.Contains(out, want) {
		t.Errorf("%s: %s MiB %d..%d read %q in %s; want sha256 %s", tag, file, skip, skip+count, strings.TrimSpace(out), id, want)
	}
}

// rangeSHA256 is the SHA-256 of n bytes at off of harness.RandomReader(seed).
func rangeSHA256(t *testing.T, seed uint64, off, n int64) string {
	t.Helper()
	r := harness.RandomReader(seed)
	if _, err := io.CopyN(io.Discard, r, off); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, r, n); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// removeTask kills and removes a container started with `ctr run -d`
// (errors ignored: it may be gone already).
func removeTask(ctrd *harness.Containerd, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = ctrd.Ctr(ctx, "tasks", "delete", "--force", id)
	_, _ = ctrd.Ctr(ctx, "containers", "delete", id)
}
