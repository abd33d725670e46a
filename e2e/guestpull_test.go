package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestControlOverlayfsKeepsLayerBlobs runs the harness against containerd's
// own overlayfs snapshotter: the same image pulls and runs, and here the
// layer blobs DO land in the content store. It proves that the images the
// suite builds are valid and that the "no layer blob" assertion of the
// cocoon tests can fail.
func TestControlOverlayfsKeepsLayerBlobs(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	im, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/control", imageOptions{})
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", im.Ref); err != nil {
		t.Fatal(err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", im.Ref, containerID(t, "run"), "/bin/cat", "/layer2/message")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, msg) {
		t.Errorf("container printed %q, want %q", out, msg)
	}
	content, err := ctrd.ContentDigests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.LayerDigests() {
		if !slices.Contains(content, d) {
			t.Errorf("overlayfs pull: layer blob %s missing from the content store %v", d, content)
		}
	}
	committed := committedSnapshots(t, ctx, ctrd, "overlayfs")
	for _, id := range im.ChainIDs() {
		if !slices.Contains(committed, id) {
			t.Errorf("overlayfs pull: no committed snapshot %s (have %v)", id, committed)
		}
	}
}

// TestGuestPull pulls and runs 2-layer images through cocoon in every layer
// format the suite can build: cocoond fetches the layers, containerd's
// content store keeps only the manifest and config.
func TestGuestPull(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      imageOptions
		layerType string // media type expected for layer 2
	}{
		{"oci-gzip", imageOptions{}, harness.MediaTypeOCILayerGzip},
		{"docker-schema2", imageOptions{docker: true}, harness.MediaTypeDockerLayer},
		{"oci-zstd", imageOptions{top: harness.Zstd}, harness.MediaTypeOCILayerZstd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			ctx := testContext(t, 5*time.Minute)
			s := startCocoonStack(t, ctx, env)
			im, msg := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/"+tc.name, tc.opts)
			if tc.opts.top == harness.Zstd {
				// crane labels every appended layer gzip; relabel.
				var err error
				if im, err = s.reg.SetLayerMediaType(ctx, im, 1, harness.MediaTypeOCILayerZstd); err != nil {
					t.Fatal(err)
				}
			}
			wantManifest := harness.MediaTypeOCIManifest
			if tc.opts.docker {
				wantManifest = harness.MediaTypeDockerManifest
			}
			if im.Manifest.MediaType != wantManifest || im.Manifest.Layers[1].MediaType != tc.layerType {
				t.Fatalf("test image is not what the case needs: manifest %q layer 2 %q, want %q and %q",
					im.Manifest.MediaType, im.Manifest.Layers[1].MediaType, wantManifest, tc.layerType)
			}

			before, err := s.cocoond.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref); err != nil {
				t.Fatal(err)
			}
			out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, im.Ref, containerID(t, "run"),
				"/bin/sh", "-c", "cat /layer2/message && test -x /bin/busybox && echo tmp-ok > /tmp/x && cat /tmp/x")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, msg) || !strings.Contains(out, "tmp-ok") {
				t.Errorf("container printed %q, want %q and tmp-ok", out, msg)
			}

			assertNoLayerBlobs(t, ctx, s.ctrd, im)
			committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
			for i, id := range im.ChainIDs() {
				if !slices.Contains(committed, id) {
					t.Errorf("no committed cocoon snapshot for layer %d chain %s (have %v)", i, id, committed)
				}
			}

			after, err := s.cocoond.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			layers := harness.MetricSum(after, "cocoon_pull_layers_total") - harness.MetricSum(before, "cocoon_pull_layers_total")
			bytes := harness.MetricSum(after, "cocoon_pull_bytes_total") - harness.MetricSum(before, "cocoon_pull_bytes_total")
			if layers != 2 {
				t.Errorf("cocoon_pull_layers_total rose by %v, want 2", layers)
			}
			if int64(bytes) < im.LayerBytes() {
				t.Errorf("cocoon_pull_bytes_total rose by %v, want at least the %d compressed layer bytes", bytes, im.LayerBytes())
			}
			t.Logf("%s: %d layers, %d compressed bytes fetched by cocoond", im.Ref, int(layers), int64(bytes))

			// Pulling again finds every layer committed: nothing is fetched.
			if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref); err != nil {
				t.Fatal(err)
			}
			again, err := s.cocoond.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n := harness.MetricSum(again, "cocoon_pull_layers_total") - harness.MetricSum(after, "cocoon_pull_layers_total"); n != 0 {
				t.Errorf("pulling the image a second time pulled %v layers again", n)
			}
		})
	}
}

// TestGuestPullRejectsTamperedLayer makes layer 2's blob differ from its
// digest (a valid gzip of a valid tar of the same size, so only the digest
// can catch it). The pull must fail naming the digest, and nothing may be
// committed for layer 2's chain or enter containerd's content store.
//
//   - served: the registry serves the tampered bytes (an in-process proxy
//     plays the compromised registry): the error must say "digest mismatch".
//   - disk-store: the blob file in crane's disk store is overwritten. crane
//     re-hashes blobs when serving and answers 404 for it, so cocoond never
//     sees the bytes; the pull must still fail cleanly. Should the registry
//     ever serve the bytes, "digest mismatch" is required as well.
func TestGuestPullRejectsTamperedLayer(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := reg.StartTamperProxy()
	if err != nil {
		t.Fatal(err)
	}
	s := startCocoonStackWithRegistry(t, ctx, env, reg, proxy.Host)

	for _, where := range []string{"served", "disk-store"} {
		t.Run(where, func(t *testing.T) {
			im, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/tampered-"+where, imageOptions{top: harness.GzipStored})
			bad := im.Manifest.Layers[1].Digest
			orig, err := reg.GetBlob(ctx, im.Repo, bad)
			if err != nil {
				t.Fatal(err)
			}
			evil, err := sameSizeTamperedBlob(env, orig, msg)
			if err != nil {
				t.Fatal(err)
			}
			ref := im.Ref
			needMismatch := true
			switch where {
			case "served":
				proxy.Replace(bad, evil)
				ref = proxy.Host + "/" + im.Repo + ":" + im.Tag
			case "disk-store":
				if err := os.WriteFile(reg.BlobPath(bad), evil, 0o644); err != nil {
					t.Fatal(err)
				}
				_, err := reg.GetBlob(ctx, im.Repo, bad)
				needMismatch = err == nil
				t.Logf("registry serves the tampered blob: %v (%v)", needMismatch, err)
			}

			out, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, ref)
			if err == nil {
				t.Fatalf("pull of a tampered layer succeeded:\n%s", out)
			}
			if where == "served" && proxy.Served(bad) == 0 {
				t.Fatalf("the tampered blob was never requested; the pull failed for another reason: %v", err)
			}
			t.Logf("pull refused: %s", ctrReason(err))
			errText := err.Error()
			if !strings.Contains(errText, strings.TrimPrefix(bad, "sha256:")) {
				t.Errorf("pull error does not name layer digest %s:\n%v", bad, err)
			}
			if needMismatch && !strings.Contains(errText, "digest mismatch") {
				t.Errorf("pull error does not say \"digest mismatch\":\n%v", err)
			}
			committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
			if chain := im.ChainIDs()[1]; slices.Contains(committed, chain) {
				t.Errorf("snapshot %s of the tampered layer was committed (%v)", chain, committed)
			}
			content, err := s.ctrd.ContentDigests(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(content, bad) {
				t.Errorf("the tampered layer %s is in containerd's content store", bad)
			}
		})
	}
}

// sameSizeTamperedBlob returns a valid gzip (stored blocks) layer blob of
// the same size as orig in which layer2/message holds msg upper-cased: the
// same tar size, hence the same blob size, but different bytes. orig must be
// the GzipStored top layer built by pushTwoLayerImage with message msg.
func sameSizeTamperedBlob(env *harness.Env, orig []byte, msg string) ([]byte, error) {
	l := harness.NewLayer().Dir("layer2/").File("layer2/message", []byte(strings.ToUpper(msg)+"\n"), 0o644)
	b, err := l.Bytes(env.Dir, harness.GzipStored)
	if err != nil {
		return nil, err
	}
	if len(b) != len(orig) {
		return nil, fmt.Errorf("tampered blob is %d bytes, the original %d", len(b), len(orig))
	}
	if bytes.Equal(b, orig) {
		return nil, fmt.Errorf("tampered blob equals the original")
	}
	return b, nil
}

// TestGuestPullRefusesUnsafeLayers pushes busybox plus a layer that tries
// to write outside the snapshot: the pull must fail with an error naming
// the problem, layer 2's chain must not be committed, and nothing may
// appear in the directory the entry aims at.
func TestGuestPullRefusesUnsafeLayers(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 8*time.Minute)
	s := startCocoonStack(t, ctx, env)
	bb, err := harness.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	base := env.Path("unsafe-base.tar")
	if err := bb.WriteFile(base, harness.Uncompressed); err != nil {
		t.Fatal(err)
	}
	// Every attack aims at this directory, which is outside any snapshot.
	outside := env.Path("outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "host-secret"), []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := strings.Repeat("../", 24)
	rel := strings.TrimPrefix(outside, "/")
	for _, tc := range []struct {
		name  string
		layer *harness.Layer
		// entry is a fragment of the offending entry's name that the
		// error must mention.
		entry string
	}{
		{"path-traversal", harness.NewLayer().File("ok", []byte("ok\n"), 0o644).
			File(up+rel+"/traversal", []byte("escaped\n"), 0o644), "traversal"},
		{"absolute-path", harness.NewLayer().File("ok", []byte("ok\n"), 0o644).
			File(outside+"/absolute", []byte("escaped\n"), 0o644), "absolute"},
		{"symlink-escape", harness.NewLayer().Symlink("link", up).
			File("link/"+rel+"/via-symlink", []byte("escaped\n"), 0o644), "link"},
		// A hard link to a host file would put the host's bytes in the
		// image (and let the container write them).
		{"hardlink-escape", harness.NewLayer().Hardlink("leak", up+rel+"/host-secret"), "leak"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := env.Path(tc.name + ".tar")
			if err := tc.layer.WriteFile(top, harness.Uncompressed); err != nil {
				t.Fatal(err)
			}
			im, err := s.reg.Push(ctx, harness.ImageSpec{Repo: "e2e/" + tc.name, Tag: "v1", Layers: []string{base, top}})
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref)
			if err == nil {
				t.Fatalf("pull of a layer with an unsafe entry succeeded:\n%s", out)
			}
			t.Logf("pull refused: %s", ctrReason(err))
			errText := err.Error()
			if !strings.Contains(errText, "escapes") && !strings.Contains(errText, "unsafe") {
				t.Errorf("pull error does not say the entry escapes or is unsafe:\n%v", err)
			}
			if !strings.Contains(errText, tc.entry) {
				t.Errorf("pull error does not name the entry (%q):\n%v", tc.entry, err)
			}
			committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
			if chain := im.ChainIDs()[1]; slices.Contains(committed, chain) {
				t.Errorf("snapshot %s of the unsafe layer was committed (%v)", chain, committed)
			}
			ents, err := os.ReadDir(outside)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Name() != "host-secret" {
					t.Errorf("the layer wrote %s outside the snapshot", filepath.Join(outside, e.Name()))
				}
			}
			if fi, err := os.Stat(filepath.Join(outside, "host-secret")); err != nil {
				t.Error(err)
			} else if n := fi.Sys().(*syscall.Stat_t).Nlink; n != 1 {
				t.Errorf("%s has %d hard links: the layer linked to it", filepath.Join(outside, "host-secret"), n)
			}
		})
	}
}

// TestCocoondRestartKeepsRunningContainer kills cocoond with SIGKILL while
// a container runs, restarts it on the same root, and checks that the
// running container still reads its rootfs and a new container starts.
func TestCocoondRestartKeepsRunningContainer(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	s := startCocoonStack(t, ctx, env)
	im, msg := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/restart", imageOptions{})
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref); err != nil {
		t.Fatal(err)
	}
	id := containerID(t, "sleeper")
	if _, err := s.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", snapshotterName, im.Ref, id, "/bin/sleep", "600"); err != nil {
		t.Fatal(err)
	}
	oldPID := s.cocoond.Proc.PID()
	if err := s.cocoond.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed cocoond pid %d with SIGKILL: %v", oldPID, s.cocoond.Proc.ExitError())
	if err := s.cocoond.Start(ctx); err != nil {
		t.Fatalf("restarting cocoond on the same root: %v", err)
	}
	out, err := s.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "e1", id, "/bin/cat", "/layer2/message")
	if err != nil {
		t.Fatalf("exec in the running container after the restart: %v", err)
	}
	if !strings.Contains(out, msg) {
		t.Errorf("exec printed %q, want %q", out, msg)
	}
	out, err = s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, im.Ref, containerID(t, "after"), "/bin/cat", "/layer2/message")
	if err != nil {
		t.Fatalf("new container after the restart: %v", err)
	}
	if !strings.Contains(out, msg) {
		t.Errorf("new container printed %q, want %q", out, msg)
	}
	committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
	for i, chain := range im.ChainIDs() {
		if !slices.Contains(committed, chain) {
			t.Errorf("after the restart cocoond lists no committed snapshot for layer %d (%s); it has %v", i, chain, committed)
		}
	}
}

// TestCocoondSIGTERMKeepsState stops cocoond with SIGTERM: it must exit
// with status 0, and once restarted on the same root it must still list the
// committed layers and serve a new container without pulling again.
func TestCocoondSIGTERMKeepsState(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	s := startCocoonStack(t, ctx, env)
	im, msg := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/sigterm", imageOptions{})
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref); err != nil {
		t.Fatal(err)
	}
	if err := s.cocoond.Proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.cocoond.Proc.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("cocoond (pid %d) still running 20 s after SIGTERM", s.cocoond.Proc.PID())
	}
	if err := s.cocoond.Proc.ExitError(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Errorf("cocoond exited with %v after SIGTERM, want status 0", ee.ProcessState)
		} else {
			t.Error(err)
		}
	}
	if err := s.cocoond.Start(ctx); err != nil {
		t.Fatalf("restarting cocoond on the same root: %v", err)
	}
	committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
	for i, chain := range im.ChainIDs() {
		if !slices.Contains(committed, chain) {
			t.Errorf("after SIGTERM and restart, no committed snapshot for layer %d (%s); cocoond lists %v", i, chain, committed)
		}
	}
	before, err := s.cocoond.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, im.Ref, containerID(t, "after"), "/bin/cat", "/layer2/message")
	if err != nil {
		t.Fatalf("new container after the restart: %v", err)
	}
	if !strings.Contains(out, msg) {
		t.Errorf("new container printed %q, want %q", out, msg)
	}
	after, err := s.cocoond.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := harness.MetricSum(after, "cocoon_pull_layers_total") - harness.MetricSum(before, "cocoon_pull_layers_total"); n != 0 {
		t.Errorf("cocoond pulled %v layers again to run an image it had already committed", n)
	}
}

// TestGuestPullRejectsWrongDiffID pushes an image whose config claims a
// different diff ID (uncompressed digest) for layer 2 than its blob really
// has. The compressed digest is right, so only the diff ID check catches
// it. Committing it would file the layer under a chain ID that belongs to
// other content, so a later image with that chain would run these bytes.
func TestGuestPullRejectsWrongDiffID(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	s := startCocoonStack(t, ctx, env)
	im, _ := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/diffid", imageOptions{})
	bogus := "sha256:" + strings.Repeat("ab", 32)
	bad, err := s.reg.PushWithConfig(ctx, im, "bad-diffid", func(cfg map[string]any) error {
		rootfs, _ := cfg["rootfs"].(map[string]any)
		ids, _ := rootfs["diff_ids"].([]any)
		if len(ids) != 2 {
			return fmt.Errorf("config has %d diff IDs, want 2", len(ids))
		}
		ids[1] = bogus
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if bad.Config.RootFS.DiffIDs[1] != bogus || bad.Manifest.Layers[1].Digest != im.Manifest.Layers[1].Digest {
		t.Fatalf("test image is not what the test needs: diff IDs %v, layers %v", bad.Config.RootFS.DiffIDs, bad.LayerDigests())
	}
	out, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, bad.Ref)
	if err == nil {
		t.Fatalf("pull of a layer whose diff ID does not match succeeded:\n%s", out)
	}
	t.Logf("pull refused: %s", ctrReason(err))
	if !strings.Contains(strings.ToLower(err.Error()), "diff") {
		t.Errorf("pull error does not mention the diff ID:\n%v", err)
	}
	committed := committedSnapshots(t, ctx, s.ctrd, snapshotterName)
	if chain := bad.ChainIDs()[1]; slices.Contains(committed, chain) {
		t.Errorf("snapshot %s with the wrong diff ID was committed (%v)", chain, committed)
	}
}

// TestGuestPullConcurrentSharedBase pulls two images that share their base
// layer at the same time, as a kubelet starting two pods would: both pulls
// must succeed and both images must run.
func TestGuestPullConcurrentSharedBase(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	s := startCocoonStack(t, ctx, env)
	a, msgA := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/shared-a", imageOptions{})
	b, msgB := pushTwoLayerImage(t, ctx, env, s.reg, "e2e/shared-b", imageOptions{})
	if a.Manifest.Layers[0].Digest != b.Manifest.Layers[0].Digest {
		t.Fatalf("the two images do not share their base layer: %s vs %s", a.Manifest.Layers[0].Digest, b.Manifest.Layers[0].Digest)
	}
	before, err := s.cocoond.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, im := range []*harness.Image{a, b} {
		go func() {
			_, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, im.Ref)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent pull: %v", err)
		}
	}
	if t.Failed() {
		return
	}
	after, err := s.cocoond.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cocoond pulled %v layers for 2 images sharing 1 of their 2 layers",
		harness.MetricSum(after, "cocoon_pull_layers_total")-harness.MetricSum(before, "cocoon_pull_layers_total"))
	for _, c := range []struct {
		im  *harness.Image
		msg string
	}{{a, msgA}, {b, msgB}} {
		out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, c.im.Ref, containerID(t, path.Base(c.im.Repo)), "/bin/cat", "/layer2/message")
		if err != nil {
			t.Errorf("running %s: %v", c.im.Ref, err)
			continue
		}
		if !strings.Contains(out, c.msg) {
			t.Errorf("%s printed %q, want %q", c.im.Ref, out, c.msg)
		}
	}
	assertNoLayerBlobs(t, ctx, s.ctrd, a)
	assertNoLayerBlobs(t, ctx, s.ctrd, b)
}
