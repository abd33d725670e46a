package e2e

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// tocDigestAnnotation is the layer annotation a lazy snapshotter checks an
// eStargz TOC against (estargz.TOCJSONDigestAnnotation).
const tocDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"

// convertImage runs `cocoonctl convert --estargz --insecure ARGS... SRC DST`
// and returns what it printed on stdout.
func convertImage(t *testing.T, ctx context.Context, env *harness.Env, args ...string) string {
	t.Helper()
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, cocoonctl, append([]string{"convert", "--estargz", "--insecure"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cocoonctl convert: %v: %s", err, stderr.String())
	}
	return string(out)
}

// checkESGZManifest checks that every layer of im carries a TOC digest.
func checkESGZManifest(t *testing.T, im *harness.Image, encrypted bool) {
	t.Helper()
	for i, l := range im.Manifest.Layers {
		if !strings.HasPrefix(l.Annotations[tocDigestAnnotation], "sha256:") || strings.HasSuffix(l.MediaType, "+encrypted") != encrypted {
			t.Fatalf("%s layer %d: %s %v", im.Ref, i, l.MediaType, l.Annotations)
		}
	}
}

// TestEStargzConvertedOverlayfs: an image converted by `cocoonctl convert
// --estargz` still pulls and runs with containerd's own overlayfs
// snapshotter and no cocoon at all (containerd checks the new diff IDs as
// it unpacks, and the committed snapshots carry the new chain IDs).
func TestEStargzConvertedOverlayfs(t *testing.T) {
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
	plain, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/esgz-src", imageOptions{top: harness.Zstd})
	dst := reg.Ref("e2e/esgz", "v1")
	if out := convertImage(t, ctx, env, "--prioritize", "/layer2/message", plain.Ref, dst); !strings.HasPrefix(out, dst+"@sha256:") {
		t.Fatalf("cocoonctl convert printed %q", out)
	}
	im, err := reg.Image(ctx, "e2e/esgz", "v1")
	if err != nil {
		t.Fatal(err)
	}
	checkESGZManifest(t, im, false)
	if slices.Equal(im.Config.RootFS.DiffIDs, plain.Config.RootFS.DiffIDs) {
		t.Fatal("diff IDs unchanged although eStargz rewrote the tar streams")
	}
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", dst); err != nil {
		t.Fatalf("overlayfs pull of the eStargz image: %v", err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", dst, containerID(t, "esgz"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("eStargz image on overlayfs printed %q, %v; want %q", out, err, msg)
	}
	committed := committedSnapshots(t, ctx, ctrd, "overlayfs")
	for _, id := range im.ChainIDs() {
		if !slices.Contains(committed, id) {
			t.Errorf("overlayfs: no committed snapshot for chain ID %s (have %v)", id, committed)
		}
	}
}

// TestEStargzConvertedEncrypted: an image converted to eStargz and
// encrypted by `cocoonctl convert --estargz --encrypt` keeps the TOC digest
// annotations on its encrypted layers, and full-pulls and runs through
// cocoon with the KEK the KBS releases.
func TestEStargzConvertedEncrypted(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	kek := make([]byte, 32)
	rand.Read(kek)
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy:    harness.AllowAllPolicy,
		Resources: map[string][]byte{"default/image-kek/esgz": kek},
	})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		ExtraArgs:          []string{"--kbs-url", kbs.URL, "--tee", "sample"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := startContainerdFor(t, ctx, env, cd)
	plain, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/esgz-src", imageOptions{top: harness.Zstd})
	kekFile := env.Path("esgz-kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := reg.Ref("e2e/esgz-enc", "v1")
	convertImage(t, ctx, env, "--encrypt", "--kid", "kbs:///default/image-kek/esgz", "--key-file", kekFile, plain.Ref, dst)
	im, err := reg.Image(ctx, "e2e/esgz-enc", "v1")
	if err != nil {
		t.Fatal(err)
	}
	checkESGZManifest(t, im, true)
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", dst); err != nil {
		t.Fatalf("cocoon pull of the encrypted eStargz image: %v", err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", dst, containerID(t, "esgz-enc"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("encrypted eStargz image through cocoon printed %q, %v; want %q", out, err, msg)
	}
	if !strings.Contains(cd.Proc.Log(), "layer pulled and verified") {
		t.Error("cocoond did not pull the encrypted layers itself")
	}
}
