package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// snapshotterName is the proxy plugin name cocoonctl configures.
const snapshotterName = "cocoon"

// newEnv returns a harness Env, skipping when not root.
func newEnv(t *testing.T) *harness.Env {
	t.Helper()
	env, err := harness.New(t)
	if errors.Is(err, harness.ErrNotRoot) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// testContext is cancelled at the test's deadline (minus a margin for
// cleanup) or after limit.
func testContext(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	deadline := time.Now().Add(limit)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

func randomToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// cocoonStack is a registry, cocoond and a containerd configured with
// cocoonctl's fragment.
type cocoonStack struct {
	env     *harness.Env
	reg     *harness.Registry
	cocoond *harness.Cocoond
	ctrd    *harness.Containerd
}

// startCocoonStack starts the registry, cocoond (trusting the registry and
// any extra plain-HTTP hosts) and containerd.
func startCocoonStack(t *testing.T, ctx context.Context, env *harness.Env, extraInsecure ...string) *cocoonStack {
	t.Helper()
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return startCocoonStackWithRegistry(t, ctx, env, reg, extraInsecure...)
}

func startCocoonStackWithRegistry(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry, extraInsecure ...string) *cocoonStack {
	t.Helper()
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{InsecureRegistries: append([]string{reg.Host}, extraInsecure...)})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := startContainerdFor(t, ctx, env, cd)
	return &cocoonStack{env: env, reg: reg, cocoond: cd, ctrd: ctrd}
}

// startContainerdFor starts containerd configured (by cocoonctl
// containerd-config) to use cd as its cocoon snapshotter.
func startContainerdFor(t *testing.T, ctx context.Context, env *harness.Env, cd *harness.Cocoond) *harness.Containerd {
	t.Helper()
	frag, err := cd.ContainerdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{Fragments: []string{frag}})
	if err != nil {
		t.Fatal(err)
	}
	return ctrd
}

// imageOptions shape the image pushTwoLayerImage builds.
type imageOptions struct {
	// docker selects Docker schema2 media types instead of OCI.
	docker bool
	// top is how the second layer's file is written (crane gzips an
	// Uncompressed tar itself; compressed files are pushed as they are).
	top harness.Compression
}

// layerFileSuffix names layer files after their compression.
var layerFileSuffix = map[harness.Compression]string{
	harness.Uncompressed: ".tar", harness.Gzip: ".tar.gz", harness.GzipStored: ".tar.gz", harness.Zstd: ".tar.zst",
}

// pushTwoLayerImage builds busybox plus a layer holding /layer2/message (a
// line with a random token), pushes it as repo:v1 and returns the image and
// the message.
func pushTwoLayerImage(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry, repo string, o imageOptions) (*harness.Image, string) {
	t.Helper()
	name := path.Base(repo)
	bb, err := harness.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	base := env.Path(name + "-base.tar")
	if err := bb.WriteFile(base, harness.Uncompressed); err != nil {
		t.Fatal(err)
	}
	msg := "hello from layer 2, token " + randomToken(t)
	top := harness.NewLayer().Dir("layer2/").File("layer2/message", []byte(msg+"\n"), 0o644)
	topPath := env.Path(name + "-top" + layerFileSuffix[o.top])
	if err := top.WriteFile(topPath, o.top); err != nil {
		t.Fatal(err)
	}
	im, err := reg.Push(ctx, harness.ImageSpec{Repo: repo, Tag: "v1", Layers: []string{base, topPath}, Docker: o.docker, Cmd: []string{"/bin/cat", "/layer2/message"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifest.Layers) != 2 {
		t.Fatalf("pushed %s has %d layers, want 2", im.Ref, len(im.Manifest.Layers))
	}
	return im, msg
}

// assertNoLayerBlobs checks that containerd's content store (in the
// default namespace or the one given) holds the manifest and config of im
// but none of its layer blobs.
func assertNoLayerBlobs(t *testing.T, ctx context.Context, ctrd *harness.Containerd, im *harness.Image, namespace ...string) {
	t.Helper()
	content, err := ctrd.ContentDigests(ctx, namespace...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{im.ManifestDigest, im.Manifest.Config.Digest} {
		if !slices.Contains(content, want) {
			t.Errorf("content store lacks %s (manifest or config); it holds %v", want, content)
		}
	}
	for i, d := range im.LayerDigests() {
		if slices.Contains(content, d) {
			t.Errorf("content store holds layer %d blob %s: containerd fetched it instead of cocoond", i, d)
		}
	}
}

// committedSnapshots returns the keys of committed snapshots.
func committedSnapshots(t *testing.T, ctx context.Context, ctrd *harness.Containerd, snapshotter string) []string {
	t.Helper()
	snaps, err := ctrd.Snapshots(ctx, snapshotter)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range snaps {
		if s.Kind == "Committed" {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// containerID makes a container ID unique per test and per run: runc's
// state lives in /run/containerd/runc/<namespace>/<id>, shared by every
// containerd on the machine.
func containerID(t *testing.T, suffix string) string {
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	return filepath.Base(name) + "-" + suffix + "-" + randomToken(t)[:8]
}

// ctrReason returns the "ctr: ..." line of a failed ctr command's error,
// or the whole error.
func ctrReason(err error) string {
	for _, line := range strings.Split(err.Error(), "\n") {
		if i := strings.Index(line, "ctr: "); i >= 0 {
			return line[i:]
		}
	}
	return err.Error()
}

// encryptImage runs `cocoonctl encrypt` with the key-encryption key kek
// (written to a 0600 file in the test's work directory), wrapping the layer
// keys of src for kid, and pushes the result as dst.
func encryptImage(t *testing.T, ctx context.Context, env *harness.Env, kek []byte, kid, src, dst string) {
	t.Helper()
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	kekFile := env.Path("kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, cocoonctl, "encrypt", "--insecure", "--kid", kid, "--key-file", kekFile, src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cocoonctl encrypt: %v: %s", err, out)
	}
}
