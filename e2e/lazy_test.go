package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// lazyConfig enables lazy pull without background completion, so that
// every byte the registry serves for a layer was fetched for what the
// container (and the prefetch) read.
const lazyConfig = "[lazy]\nenable = true\nbackground_completion = false\n"

// bigFileSize is the size of each of the two random files of the big
// layer (64 MiB in all).
const bigFileSize = 32 << 20

// lazyStack is a KBS (for encrypted layers), a registry behind a counting
// TamperProxy, cocoond with [lazy] enabled, and containerd. Images are
// pushed to the registry and pulled through the proxy.
type lazyStack struct {
	env     *harness.Env
	reg     *harness.Registry
	proxy   *harness.TamperProxy
	cocoond *harness.Cocoond
	ctrd    *harness.Containerd
	kekFile string
}

const lazyKID = "kbs:///default/image-kek/lazy"

func startLazyStack(t *testing.T, ctx context.Context, env *harness.Env) *lazyStack {
	t.Helper()
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{strings.TrimPrefix(lazyKID, "kbs:///"): kek},
	})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := reg.StartTamperProxy()
	if err != nil {
		t.Fatal(err)
	}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host, proxy.Host},
		Config:             lazyConfig,
		ExtraArgs:          []string{"--kbs-url", kbs.URL, "--tee", "sample"},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &lazyStack{env: env, reg: reg, proxy: proxy, cocoond: cd, ctrd: startContainerdFor(t, ctx, env, cd), kekFile: env.Path("lazy-kek")}
	if err := os.WriteFile(s.kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// pushBigImage pushes busybox (with /etc/lazy-variant naming variant, so
// that no two variants share a chain ID) plus a layer holding /data/message
// (a line with a random token, the entrypoint's output) and /data/big1 and
// /data/big2 (random bytes).
func pushBigImage(t *testing.T, ctx context.Context, s *lazyStack, repo, variant string) (*harness.Image, string) {
	t.Helper()
	bb, err := harness.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	bb.File("etc/lazy-variant", []byte(variant+"\n"), 0o644)
	base := s.env.Path("lazy-base.tar")
	if err := bb.WriteFile(base, harness.Uncompressed); err != nil {
		t.Fatal(err)
	}
	msg := "hello from a lazy layer, token " + randomToken(t)
	top := harness.NewLayer().Dir("data/").File("data/message", []byte(msg+"\n"), 0o644).
		StreamFile("data/big1", bigFileSize, func() io.Reader { return harness.RandomReader(1) }).
		StreamFile("data/big2", bigFileSize, func() io.Reader { return harness.RandomReader(2) })
	topPath := s.env.Path("lazy-top.tar")
	if err := top.WriteFile(topPath, harness.Uncompressed); err != nil {
		t.Fatal(err)
	}
	im, err := s.reg.Push(ctx, harness.ImageSpec{Repo: repo, Tag: "v1", Layers: []string{base, topPath}, Cmd: []string{"/bin/sh", "-c", lazyCmd}})
	if err != nil {
		t.Fatal(err)
	}
	return im, msg
}

// lazyVariant names the plain or encrypted variant of a test image.
func lazyVariant(encrypted bool) string {
	if encrypted {
		return "encrypted"
	}
	return "plain"
}

// pushESGZImage pushes pushBigImage's image to repo-src and its eStargz
// conversion (/data/message prioritized; encrypted for the KBS key
// lazyKID) to repo:v1, and returns the converted image and its message.
func (s *lazyStack) pushESGZImage(t *testing.T, ctx context.Context, repo string, encrypted bool) (*harness.Image, string) {
	t.Helper()
	args := []string{"--prioritize", "/data/message"}
	if encrypted {
		args = append(args, "--encrypt", "--kid", lazyKID, "--key-file", s.kekFile)
	}
	src, msg := pushBigImage(t, ctx, s, repo+"-src", lazyVariant(encrypted))
	convertImage(t, ctx, s.env, append(args, src.Ref, s.reg.Ref(repo, "v1"))...)
	im, err := s.reg.Image(ctx, repo, "v1")
	if err != nil {
		t.Fatal(err)
	}
	return im, msg
}

// proxyRef is ref (on the registry) as pulled through the proxy.
func (s *lazyStack) proxyRef(ref string) string {
	return s.proxy.Host + strings.TrimPrefix(ref, s.reg.Host)
}

// TestLazyPull, for a plain and an encrypted eStargz image made by
// `cocoonctl convert --estargz [--encrypt]`: a manifest whose TOC digest
// annotation does not match the blob is refused, naming the digest; the
// container prints its first output while the registry served a small
// fraction of the big layer; a flipped byte in the registry's blob gives
// EIO for that file while the other files read fine; after a graceful
// restart of cocoond and of its lazy FUSE server (the new configuration
// applies to the mounts of a new server) the committed lazy layers are
// mounted again and new containers run; with background completion every
// blob is then verified whole, and after another restart of both the
// layers are read from those local copies without the registry.
func TestLazyPull(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 15*time.Minute)
	s := startLazyStack(t, ctx, env)
	var runs []lazyRun
	for _, encrypted := range []bool{false, true} {
		name := lazyVariant(encrypted)
		t.Run(name, func(t *testing.T) {
			repo := "e2e/lazy-" + name
			im, msg := s.pushESGZImage(t, ctx, repo, encrypted)
			checkESGZManifest(t, im, encrypted)
			s.wrongTOC(t, ctx, im, repo)
			s.firstOutput(t, ctx, im, msg)
			s.flippedChunk(t, ctx, im, repo)
			runs = append(runs, lazyRun{name: name, ref: s.proxyRef(im.Ref), msg: msg, big: im.Manifest.Layers[1].Digest})
		})
	}
	if len(runs) != 2 || t.Failed() {
		return
	}

	// A graceful restart, now with background completion, mounts the
	// committed lazy layers again; new containers run; every blob is
	// completed and verified (digest, HMAC of the ciphertext, diff ID).
	if err := os.WriteFile(filepath.Join(env.Path("cocoon"), "cocoond.toml"), []byte("[lazy]\nenable = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.restartCocoond(t, ctx)
	if !strings.Contains(s.cocoond.Proc.Log(), "committed lazy layer mounted again") {
		t.Fatalf("restarted cocoond did not mount the committed lazy layers again:\n%s", s.cocoond.Proc.Log())
	}
	s.runAll(t, ctx, runs, "restarted")
	const complete = "blob complete, digest and diff ID verified"
	for strings.Count(s.lazyLog(), complete) < 2*len(runs) {
		if strings.Contains(s.lazyLog(), "marked bad") || ctx.Err() != nil {
			t.Fatalf("background completion of the lazy layers failed:\n%s", s.lazyLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Where the kernel allows FUSE passthrough, files of the completed
	// layers are now read from verified plain copies, not by the server.
	s.runAll(t, ctx, runs, "completed")
	if strings.Contains(s.lazyLog(), "passthrough=available") && !strings.Contains(s.lazyLog(), "serving completed files by FUSE passthrough") {
		t.Errorf("FUSE passthrough is available but no file of a completed layer was served by it:\n%s", s.lazyLog())
	}

	// Another restart serves the verified local copies: the registry
	// serves nothing more of the big layers.
	var before int64
	for _, r := range runs {
		before += s.proxy.Forwarded(r.big)
	}
	s.restartCocoond(t, ctx)
	if strings.Count(s.lazyLog(), "serving a completed local copy") < 2*len(runs) {
		t.Errorf("the restarted lazy FUSE server did not serve the completed layers from their local copies:\n%s", s.lazyLog())
	}
	s.runAll(t, ctx, runs, "local")
	var after int64
	for _, r := range runs {
		after += s.proxy.Forwarded(r.big)
	}
	if after != before {
		t.Errorf("the registry served %d more bytes of the big layers although their local copies were complete", after-before)
	}
}

// lazyRun is one image TestLazyPull pulled lazily.
type lazyRun struct{ name, ref, msg, big string }

// restartCocoond stops cocoond with SIGTERM and its lazy FUSE server
// (which unmounts every layer), and starts cocoond again, which starts a
// new server with its configuration.
func (s *lazyStack) restartCocoond(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := s.cocoond.Proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.cocoond.Proc.Done():
	case <-ctx.Done():
		t.Fatal("cocoond did not exit after SIGTERM")
	}
	if err := s.cocoond.StopLazyServer(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.cocoond.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSnapshotter(t, ctx, s.ctrd)
}

// waitSnapshotter waits until containerd reaches cocoond's snapshots API
// again: after a restart its connection may still be backing off.
func waitSnapshotter(t *testing.T, ctx context.Context, ctrd *harness.Containerd) {
	t.Helper()
	for {
		_, err := ctrd.Ctr(ctx, "snapshots", "--snapshotter", snapshotterName, "ls")
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("containerd does not reach the restarted cocoond: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// lazyLog is cocoond's log followed by its lazy FUSE server's (which
// logs the fetches, verifications and completions).
func (s *lazyStack) lazyLog() string {
	return s.cocoond.Proc.Log() + s.cocoond.LazyServerLog()
}

// lazyCmd prints the message file of the lazy layer, then how many bytes
// of it the container read: a run whose output lacks the message then says
// whether the file read short (the layer's fault) or the output was lost on
// its way to ctr (nothing printed at all). The pause lets ctr's copy of a
// short-lived container's output finish before the task exits.
// (crane mutate takes the command as CSV: no quotes, no commas.)
const lazyCmd = `cat /data/message; echo read $(wc -c < /data/message) bytes of /data/message; sleep 0.2`

// runAll runs a new container of each image and checks its output.
func (s *lazyStack) runAll(t *testing.T, ctx context.Context, runs []lazyRun, suffix string) {
	t.Helper()
	for _, r := range runs {
		out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, r.ref, containerID(t, r.name+"-"+suffix))
		if err != nil || !strings.Contains(out, r.msg) {
			t.Errorf("%s image (%s) printed %q, %v; want %q; the lazy FUSE server's log:\n%s", r.name, suffix, out, err, r.msg, s.cocoond.LazyServerLog())
		}
	}
}

// wrongTOC pushes im's manifest with the big layer's TOC digest annotation
// replaced by the base layer's and checks that the pull is refused with an
// error naming that digest, committing nothing of the big layer.
func (s *lazyStack) wrongTOC(t *testing.T, ctx context.Context, im *harness.Image, repo string) {
	t.Helper()
	right := im.Manifest.Layers[1].Annotations[tocDigestAnnotation]
	wrong := im.Manifest.Layers[0].Annotations[tocDigestAnnotation]
	if strings.Count(string(im.ManifestRaw), right) != 1 {
		t.Fatalf("TOC digest %s appears %d times in the manifest", right, strings.Count(string(im.ManifestRaw), right))
	}
	body := strings.Replace(string(im.ManifestRaw), right, wrong, 1)
	if _, err := s.reg.PutManifest(ctx, repo, "badtoc", im.Manifest.MediaType, []byte(body)); err != nil {
		t.Fatal(err)
	}
	_, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, s.proxyRef(s.reg.Ref(repo, "badtoc")))
	if err == nil || !strings.Contains(err.Error(), "TOC digest") || !strings.Contains(err.Error(), wrong) {
		t.Fatalf("pull with a wrong TOC digest annotation: %v; want a TOC digest error naming %s", err, wrong)
	}
	t.Logf("wrong TOC digest refused: %s", ctrReason(err))
	for _, c := range committedSnapshots(t, ctx, s.ctrd, snapshotterName) {
		if c == im.ChainIDs()[1] {
			t.Fatal("the layer with the wrong TOC digest was committed")
		}
	}
}

// firstOutput pulls im lazily and runs it: it must print its message while
// the registry served under a fifth of the big layer (no background
// completion runs, so everything fetched was fetched for the container).
func (s *lazyStack) firstOutput(t *testing.T, ctx context.Context, im *harness.Image, msg string) {
	t.Helper()
	ref := s.proxyRef(im.Ref)
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, ref); err != nil {
		t.Fatalf("lazy pull: %v", err)
	}
	assertNoLayerBlobs(t, ctx, s.ctrd, im)
	out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, ref, containerID(t, "first"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("lazy container printed %q, %v; want %q", out, err, msg)
	}
	big := im.Manifest.Layers[1]
	fetched := s.proxy.Forwarded(big.Digest)
	t.Logf("first output after the registry served %d of the big layer's %d bytes (%.4f%%); image layers total %d bytes",
		fetched, big.Size, 100*float64(fetched)/float64(big.Size), im.LayerBytes())
	if fetched <= 0 || fetched*5 >= big.Size {
		t.Fatalf("the registry served %d of %d bytes of the big layer before the container's output; want a small fraction (< 20%%)", fetched, big.Size)
	}
	if !strings.Contains(s.cocoond.Proc.Log(), "lazy layer mounted and committed") {
		t.Fatal("cocoond did not mount the layers lazily")
	}
}

// flippedChunk makes the proxy serve the big layer with one byte flipped
// inside /data/big1's data: reading that file fails with EIO, /data/big2
// and /data/message read fine.
func (s *lazyStack) flippedChunk(t *testing.T, ctx context.Context, im *harness.Image, repo string) {
	t.Helper()
	big := im.Manifest.Layers[1]
	blob, err := s.reg.GetBlob(ctx, repo, big.Digest)
	if err != nil {
		t.Fatal(err)
	}
	// The blob holds /data/message (prioritized), the landmark, then
	// big1's 32 MiB of incompressible data: 8 MiB in is inside big1.
	blob[8<<20] ^= 0xff
	s.proxy.Replace(big.Digest, blob)
	script := "cat /data/big1 2>&1 >/dev/null; echo big1=$?; wc -c </data/big2; cat /data/message"
	out, err := s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, s.proxyRef(im.Ref), containerID(t, "flipped"), "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("container reading the tampered layer: %v (%s)", err, out)
	}
	if !strings.Contains(out, "Input/output error") || !strings.Contains(out, "big1=1") {
		t.Errorf("reading the file with the flipped chunk: %q; want EIO", out)
	}
	if !strings.Contains(out, "33554432") || !strings.Contains(out, "hello from a lazy layer") {
		t.Errorf("other files of the tampered layer: %q; want them read in full", out)
	}
	if !strings.Contains(s.lazyLog(), "chunk verification failed") {
		t.Error("the lazy FUSE server logged no chunk verification failure")
	}
	if s.proxy.Served(big.Digest) == 0 {
		t.Error("the tampered blob was never served")
	}
	s.proxy.Restore(big.Digest)
}

// TestLazyPullPolicy: the image security policy gates a lazy pull exactly
// as a full pull: an unsigned eStargz image is refused with upstream's
// message and nothing of it is mounted or committed; the same image signed
// (and mixed: its base layer's descriptor without a TOC digest) is pulled,
// the base layer whole and the other lazily, and runs.
func TestLazyPullPolicy(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	if _, err := os.Stat(env.Tool("cosign")); err != nil {
		t.Fatalf("cosign missing (run `make e2e-tools`): %v", err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := newSigner(t, ctx, env, reg)
	pub := s.cosignKey("good")
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{
		%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]}}}`, reg.Host+"/coco")
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{"default/cosign-key/1": pub, "default/image-policy/1": []byte(policy)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cdh := s.write("cdh.toml", fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/1\"\n", kbs.URL))
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		Config:             lazyConfig,
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := startContainerdFor(t, ctx, env, cd)
	src, msg := pushTwoLayerImage(t, ctx, env, reg, "src/lazy", imageOptions{})

	convertImage(t, ctx, env, src.Ref, reg.Ref("coco/lazy-unsigned", "v1"))
	unsigned, err := reg.Image(ctx, "coco/lazy-unsigned", "v1")
	if err != nil {
		t.Fatal(err)
	}
	checkESGZManifest(t, unsigned, false)
	const upstream = "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule"
	_, err = ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, unsigned.Ref)
	if err == nil || !strings.Contains(err.Error(), upstream) {
		t.Fatalf("unsigned lazy image: pull error = %v, want upstream's %q", err, upstream)
	}
	if c := committedSnapshots(t, ctx, ctrd, snapshotterName); len(c) != 0 {
		t.Fatalf("a refused lazy image left committed snapshots %v", c)
	}
	if strings.Contains(cd.Proc.Log(), "lazy layer mounted") {
		t.Fatal("a layer of the refused image was mounted")
	}

	// Signed, and mixed: the base layer's descriptor has no TOC digest, so
	// it is pulled whole while the top layer is mounted lazily.
	convertImage(t, ctx, env, src.Ref, reg.Ref("coco/lazy-signed", "v1"))
	converted, err := reg.Image(ctx, "coco/lazy-signed", "v1")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(converted.ManifestRaw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m["layers"].([]any)[0].(map[string]any)["annotations"].(map[string]any), tocDigestAnnotation)
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PutManifest(ctx, "coco/lazy-signed", "mixed", converted.Manifest.MediaType, body); err != nil {
		t.Fatal(err)
	}
	signed, err := reg.Image(ctx, "coco/lazy-signed", "mixed")
	if err != nil {
		t.Fatal(err)
	}
	s.cosign("cosign", "good", signed)
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, signed.Ref); err != nil {
		t.Fatalf("signed lazy image refused: %v", err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, signed.Ref, containerID(t, "signed"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("signed lazy image printed %q, %v; want %q", out, err, msg)
	}
	log := cd.Proc.Log()
	if strings.Count(log, "lazy layer mounted and committed") != 1 || strings.Count(log, "msg=\"layer committed\"") != 1 {
		t.Fatalf("the mixed image was not pulled with one full and one lazy layer:\n%s", log)
	}
}
