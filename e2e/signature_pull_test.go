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
	s := newSigner(t, ctx, env, reg)
	pub := s.cosignKey("good")
	s.cosignKey("other")
	fpr, gpgPub := s.gpgKey()
	// cosign images under coco/, GPG simple signing under gpg/ (lookaside).
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{
		%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}],
		%q:[{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/gpg-key/1"}]}}}`, reg.Host+"/coco", reg.Host+"/gpg")
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy: harness.AllowAllPolicy,
		Resources: map[string][]byte{
			"default/cosign-key/1":   pub,
			"default/gpg-key/1":      gpgPub,
			"default/image-policy/1": []byte(policy),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	lookaside := filepath.Join(s.dir, "lookaside")
	cdh := s.write("cdh.toml", fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/1\"\nsigstore_config = '''\ndocker:\n  %s:\n    sigstore: file://%s\n'''\n", kbs.URL, reg.Host, lookaside))
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := startContainerdFor(t, ctx, env, cd)

	v2, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/signed", imageOptions{})
	s.cosign("cosign", "good", v2)
	v3, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/signed-v3", imageOptions{})
	s.cosign("cosign3", "good", v3)
	gpgSrc, _ := pushTwoLayerImage(t, ctx, env, reg, "unsigned/src", imageOptions{})
	gpgSigned := s.skopeoCopySigned(fpr, gpgSrc, "gpg/signed", lookaside)
	for name, im := range map[string]*harness.Image{"cosign v2": v2, "cosign v3": v3, "gpg simple signing": gpgSigned} {
		if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref); err != nil {
			t.Fatalf("%s signed image refused: %v", name, err)
		}
		if out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", im.Ref, containerID(t, "signed")); err != nil || !strings.Contains(out, "hello from layer 2") {
			t.Fatalf("%s signed image run: %q, %v", name, out, err)
		}
	}

	const upstream = "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule"
	for _, tc := range []struct {
		name string
		sign string
	}{
		{"unsigned", ""},
		{"wrong-key", "other"},
		{"tampered", "tampered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, _ := pushTwoLayerImage(t, ctx, env, reg, "coco/"+tc.name, imageOptions{})
			switch tc.sign {
			case "":
			case "tampered":
				// v2's signature stored as this image's: it signs another digest.
				if _, err := reg.Crane(ctx, "copy", "--insecure", reg.Host+"/coco/signed:"+sigTag(v2.ManifestDigest), reg.Host+"/coco/"+tc.name+":"+sigTag(im.ManifestDigest)); err != nil {
					t.Fatal(err)
				}
			default:
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

// skopeoCopySigned copies src to repo:v1 with skopeo, signing it with the
// GPG key fpr into the lookaside directory (simple signing).
func (s *signer) skopeoCopySigned(fpr string, src *harness.Image, repo, lookaside string) *harness.Image {
	s.t.Helper()
	regd := filepath.Join(s.dir, "registries.d-pull")
	if err := os.MkdirAll(regd, 0o700); err != nil {
		s.t.Fatal(err)
	}
	s.write("registries.d-pull/e2e.yaml", fmt.Sprintf(`{"docker":{%q:{"lookaside":"file://%s","lookaside-staging":"file://%s"}}}`, s.reg.Host, lookaside, lookaside))
	s.run("/usr/bin/skopeo", "--insecure-policy", "--registries.d", regd, "copy",
		"--src-tls-verify=false", "--dest-tls-verify=false", "--sign-by", fpr,
		"docker://"+src.Ref, "docker://"+s.reg.Ref(repo, "v1"))
	im, err := s.reg.Image(s.ctx, repo, "v1")
	if err != nil {
		s.t.Fatal(err)
	}
	return im
}
