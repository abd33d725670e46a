package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestNRIRefusesImageSharingAcceptedLayers: the image security policy
// applies to every image, not to every layer fetched. Through containerd's
// CRI plugin (crictl), a cosign-signed image is pulled and accepted; an
// image with the same layers and another entrypoint (crane mutate), under a
// reference whose policy is sigstoreSigned but which nobody signed, pulls
// without cocoond seeing a layer Prepare (containerd's metadata store
// answers them: the chain IDs exist). Creating its container must be
// refused by cocoond's NRI plugin with the policy's message; the signed
// image's container is created.
//
// Both CRI pull paths of containerd 2.x are covered: the transfer service
// (labels from the proxy plugin's enable_remote_snapshot_annotations, the
// default) and the local pull that disable_snapshot_annotations = false
// selects (containerd warns it is incompatible with the transfer service).
func TestNRIRefusesImageSharingAcceptedLayers(t *testing.T) {
	for _, localPull := range []bool{false, true} {
		name := "transfer-service"
		if localPull {
			name = "disable_snapshot_annotations=false"
		}
		t.Run(name, func(t *testing.T) { testNRIRefusesImageSharingAcceptedLayers(t, localPull) })
	}
}

func testNRIRefusesImageSharingAcceptedLayers(t *testing.T, localPull bool) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	for _, tool := range []string{"cosign", "crictl"} {
		if _, err := os.Stat(env.Tool(tool)); err != nil {
			t.Fatalf("%s missing (run `make e2e-tools`): %v", tool, err)
		}
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, cdh := signedPolicyKBS(t, ctx, env, reg, nil)

	// The pause image (accepted by the policy) and the signed image.
	pause := pushPauseImage(t, ctx, env, reg)
	signed, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/signed", imageOptions{})
	s.cosign("cosign", "good", signed)
	// Same layers, another config, nobody signed it.
	mutatedRef := reg.Ref("coco/mutated", "v1")
	if _, err := reg.Crane(ctx, "mutate", "--insecure", signed.Ref, "--entrypoint", "/bin/echo,config-of-an-unsigned-image", "-t", mutatedRef); err != nil {
		t.Fatal(err)
	}
	mutated, err := reg.Image(ctx, "coco/mutated", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(mutated.LayerDigests(), ",") != strings.Join(signed.LayerDigests(), ",") {
		t.Fatalf("mutated image has layers %v, want the signed image's %v", mutated.LayerDigests(), signed.LayerDigests())
	}

	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		Config:             "[nri]\nenable = true\nsocket_path = " + fmt.Sprintf("%q", filepath.Join(env.Path("containerd"), "nri.sock")) + "\n",
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
	})
	if err != nil {
		t.Fatal(err)
	}
	frag, err := cd.ContainerdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if localPull {
		const images = "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"cocoon\"\n"
		if !strings.Contains(frag, images) {
			t.Fatalf("cocoonctl fragment lacks %q:\n%s", images, frag)
		}
		frag = strings.Replace(frag, images, images+"  disable_snapshot_annotations = false\n", 1)
	}
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{
		Fragments: []string{frag},
		CRI:       &harness.CRIOptions{SandboxImage: pause.Ref, PlainHTTP: []string{reg.Host}, NRIRequiredPlugins: []string{"cocoon"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ctrd.NRISocket() != filepath.Join(env.Path("containerd"), "nri.sock") {
		t.Fatalf("NRI socket is %s", ctrd.NRISocket())
	}
	if err := cd.Proc.WaitLog(ctx, "NRI plugin registered with the runtime"); err != nil {
		t.Fatal(err)
	}

	for _, ref := range []string{signed.Ref, mutated.Ref} {
		if out, err := ctrd.Crictl(ctx, "pull", ref); err != nil {
			t.Fatalf("crictl pull %s: %v %s", ref, err, out)
		}
	}
	podID, podConfig, err := ctrd.PodSandbox(ctx, "nri-"+randomToken(t)[:6])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrd.CreateContainer(ctx, podID, podConfig, "signed", signed.Ref); err != nil {
		t.Fatalf("container of the signed image refused: %v", err)
	}
	_, err = ctrd.CreateContainer(ctx, podID, podConfig, "mutated", mutated.Ref)
	if err == nil {
		t.Fatal("container of an unsigned image sharing the signed image's layers was created: the policy was applied per layer, not per image")
	}
	for _, want := range []string{"cocoon: container image " + mutated.Ref + " refused", "Denied by policy"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("create error does not say %q: %v", want, err)
		}
	}
	t.Logf("refused as expected: %v", err)
}

// pushPauseImage pushes busybox with a sleeping command as pause:v1, the
// pods' sandbox image.
func pushPauseImage(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry) *harness.Image {
	t.Helper()
	bb, err := harness.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	p := env.Path("pause.tar")
	if err := bb.WriteFile(p, harness.Uncompressed); err != nil {
		t.Fatal(err)
	}
	im, err := reg.Push(ctx, harness.ImageSpec{Repo: "pause", Tag: "v1", Layers: []string{p}, Cmd: []string{"/bin/sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// TestNRIRefusesImageRelabellingEncryptedLayers: an image made without the
// key (an encrypted image's blobs relabelled as plain layers, its own
// config and command, the same diff IDs) must not run on the rootfs that
// cocoond decrypted for the encrypted image: containerd has the chain IDs,
// so the pull succeeds without cocoond, and the NRI plugin refuses the
// container because the image does not name the encrypted blobs as
// encrypted layers. The encrypted image's own container is created.
func TestNRIRefusesImageRelabellingEncryptedLayers(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	if _, err := os.Stat(env.Tool("crictl")); err != nil {
		t.Fatalf("crictl missing (run `make e2e-tools`): %v", err)
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{Policy: harness.AllowAllPolicy, Resources: map[string][]byte{"default/image-kek/app": kek}})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pause := pushPauseImage(t, ctx, env, reg)
	plain, _ := pushTwoLayerImage(t, ctx, env, reg, "e2e/plain-app", imageOptions{})
	encRef := reg.Ref("e2e/enc-app", "encrypted")
	encryptImage(t, ctx, env, kek, "kbs:///default/image-kek/app", plain.Ref, encRef)
	enc, err := reg.Image(ctx, "e2e/enc-app", "encrypted")
	if err != nil {
		t.Fatal(err)
	}
	// Without the key: same blobs named as plain gzip layers, another command.
	fake, err := reg.PushWithConfig(ctx, enc, "relabelled", func(cfg map[string]any) error {
		c, _ := cfg["config"].(map[string]any)
		if c == nil {
			c = map[string]any{}
			cfg["config"] = c
		}
		c["Cmd"] = []any{"/bin/echo", "config-of-an-image-made-without-the-key"}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range fake.Manifest.Layers {
		if !strings.HasSuffix(l.MediaType, "+encrypted") {
			t.Fatalf("layer %d of the encrypted image is %s", i, l.MediaType)
		}
		if fake, err = reg.SetLayerMediaType(ctx, fake, i, strings.TrimSuffix(l.MediaType, "+encrypted")); err != nil {
			t.Fatal(err)
		}
	}

	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		Config:             fmt.Sprintf("[nri]\nenable = true\nsocket_path = %q\n", filepath.Join(env.Path("containerd"), "nri.sock")),
		ExtraArgs:          []string{"--kbs-url", kbs.URL, "--tee", "sample"},
	})
	if err != nil {
		t.Fatal(err)
	}
	frag, err := cd.ContainerdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{
		Fragments: []string{frag},
		CRI:       &harness.CRIOptions{SandboxImage: pause.Ref, PlainHTTP: []string{reg.Host}, NRIRequiredPlugins: []string{"cocoon"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cd.Proc.WaitLog(ctx, "NRI plugin registered with the runtime"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{enc.Ref, fake.Ref} {
		if out, err := ctrd.Crictl(ctx, "pull", ref); err != nil {
			t.Fatalf("crictl pull %s: %v %s", ref, err, out)
		}
	}
	podID, podConfig, err := ctrd.PodSandbox(ctx, "enc-"+randomToken(t)[:6])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrd.CreateContainer(ctx, podID, podConfig, "encrypted", enc.Ref); err != nil {
		t.Fatalf("container of the encrypted image refused: %v", err)
	}
	_, err = ctrd.CreateContainer(ctx, podID, podConfig, "relabelled", fake.Ref)
	if err == nil {
		t.Fatal("container of an image relabelling the encrypted blobs as plain layers was created on the decrypted rootfs")
	}
	for _, want := range []string{"cocoon: container image " + fake.Ref + " refused", "was decrypted from the encrypted blob", "as a plain layer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("create error does not say %q: %v", want, err)
		}
	}
	t.Logf("refused as expected: %v", err)
}
