package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestSignedImagePullThroughSnapshotter: cocoond enforces the image
// security policy (from cdh.toml, with the policy and the cosign public key
// served by cocoon-kbs) inside the snapshotter: a cosign-signed image runs;
// unsigned and wrongly signed images fail the pull with upstream's message,
// and nothing of theirs is committed.
func TestSignedImagePullThroughSnapshotter(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	if _, err := os.Stat(env.Tool("cosign")); err != nil {
		t.Fatalf("cosign missing (run `make e2e-tools`): %v", err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &signer{t: t, ctx: ctx, env: env, reg: reg, dir: env.Path("sign")}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s.cosignKey("good")
	s.cosignKey("other")
	pub, err := os.ReadFile(filepath.Join(s.dir, "good.pub"))
	if err != nil {
		t.Fatal(err)
	}
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]}}}`, reg.Host+"/coco")
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy: harness.AllowAllPolicy,
		Resources: map[string][]byte{
			"default/cosign-key/1":   pub,
			"default/image-policy/1": []byte(policy),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cdh := s.write("cdh.toml", fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/1\"\n", kbs.URL))
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
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{Fragments: []string{frag}})
	if err != nil {
		t.Fatal(err)
	}

	signed, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/signed", imageOptions{})
	s.cosign("cosign", "good", signed)
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", signed.Ref); err != nil {
		t.Fatalf("signed image refused: %v", err)
	}
	if out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", signed.Ref, containerID(t, "signed")); err != nil || !strings.Contains(out, "hello from layer 2") {
		t.Fatalf("signed image run: %q, %v", out, err)
	}

	const upstream = "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule"
	for _, tc := range []struct {
		name string
		sign string
	}{
		{"unsigned", ""},
		{"wrong-key", "other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/"+tc.name, imageOptions{})
			if tc.sign != "" {
				s.cosign("cosign", tc.sign, im)
			}
			_, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref)
			if err == nil || !strings.Contains(err.Error(), upstream) {
				t.Fatalf("pull error = %v, want upstream's %q", err, upstream)
			}
			committed := committedSnapshots(t, ctx, ctrd, "cocoon")
			for _, id := range im.ChainIDs()[1:] {
				for _, c := range committed {
					if c == id {
						t.Errorf("layer %s of a refused image was committed", id)
					}
				}
			}
		})
	}
}
