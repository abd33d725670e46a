package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestCRIGuestPullSignedEncrypted: in guest mode, through containerd's
// CRI plugin as Kubernetes drives it (crictl pull, runp, create, start,
// logs), a cosign-signed image with encrypted layers is pulled by cocoond
// (signature checked against the policy from the KBS, layer key from the
// KBS): containerd's content store (namespace k8s.io) ends with its
// manifest and config but no layer blob, and the container prints the
// message of its top layer. An unsigned image under the same policy is
// refused at pull.
func TestCRIGuestPullSignedEncrypted(t *testing.T) {
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
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	s, cdh := signedPolicyKBS(t, ctx, env, reg, map[string][]byte{"default/image-kek/app": kek})

	pause := pushPauseImage(t, ctx, env, reg)
	plain, msg := pushTwoLayerImage(t, ctx, env, reg, "coco/plain", imageOptions{})
	encryptImage(t, ctx, env, kek, "kbs:///default/image-kek/app", plain.Ref, reg.Ref("coco/app", "encrypted"))
	enc, err := reg.Image(ctx, "coco/app", "encrypted")
	if err != nil {
		t.Fatal(err)
	}
	s.cosign("cosign", "good", enc)

	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
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
		CRI:       &harness.CRIOptions{SandboxImage: pause.Ref, PlainHTTP: []string{reg.Host}},
	})
	if err != nil {
		t.Fatal(err)
	}

	if out, err := ctrd.Crictl(ctx, "pull", plain.Ref); err == nil || !strings.Contains(err.Error(), "Denied by policy") {
		t.Fatalf("crictl pull of an unsigned image: %v %s; want the policy's refusal", err, out)
	}
	if out, err := ctrd.Crictl(ctx, "pull", enc.Ref); err != nil {
		t.Fatalf("crictl pull %s: %v %s", enc.Ref, err, out)
	}
	assertNoLayerBlobs(t, ctx, ctrd, enc, "k8s.io")
	podID, podConfig, err := ctrd.PodSandbox(ctx, "guest-"+randomToken(t)[:6])
	if err != nil {
		t.Fatal(err)
	}
	id, err := ctrd.CreateContainer(ctx, podID, podConfig, "app", enc.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ctrd.Crictl(ctx, "start", id); err != nil {
		t.Fatalf("crictl start: %v %s", err, out)
	}
	waitContainerLog(t, ctx, ctrd, id, msg)
	if !strings.Contains(cd.Proc.Log(), "layer pulled and verified") {
		t.Error("cocoond did not pull the layers itself")
	}
	assertNoLayerBlobs(t, ctx, ctrd, enc, "k8s.io")
}

// signedPolicyKBS makes the cosign key "good" and starts a KBS serving it
// with an image security policy that requires it for reg/coco/* and
// accepts reg/pause/* (the pods' sandbox image), plus extra resources; it
// returns the signer and a cdh.toml naming the KBS and the policy.
func signedPolicyKBS(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry, extra map[string][]byte) (*signer, string) {
	t.Helper()
	s := newSigner(t, ctx, env, reg)
	pub := s.cosignKey("good")
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{
		%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}],
		%q:[{"type":"insecureAcceptAnything"}]}}}`, reg.Host+"/coco", reg.Host+"/pause")
	resources := map[string][]byte{"default/cosign-key/1": pub, "default/image-policy/1": []byte(policy)}
	maps.Copy(resources, extra)
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{Policy: harness.AllowAllPolicy, Resources: resources})
	if err != nil {
		t.Fatal(err)
	}
	return s, s.write("cdh.toml", fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/1\"\n", kbs.URL))
}
