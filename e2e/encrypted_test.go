package e2e

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestEncryptedImage: an image encrypted by `cocoonctl encrypt` (layer keys
// wrapped under a KEK for the attestation-agent key provider) runs through
// cocoon when the KBS releases the KEK after attestation; a KEK absent from
// the KBS fails the pull naming the kid, and a wrong KEK fails too. Nothing
// is committed for a refused layer.
func TestEncryptedImage(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	kek := make([]byte, 32)
	wrong := make([]byte, 32)
	rand.Read(kek)
	rand.Read(wrong)
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy: harness.AllowAllPolicy,
		Resources: map[string][]byte{
			"default/image-kek/app":   kek,
			"default/image-kek/other": wrong,
		},
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
	plain, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/plain-app", imageOptions{})
	ok := reg.Ref("e2e/enc-app", "encrypted")
	encryptImage(t, ctx, env, kek, "kbs:///default/image-kek/app", plain.Ref, ok)
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", ok); err != nil {
		t.Fatalf("pull of an encrypted image whose key the KBS holds: %v", err)
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", ok, containerID(t, "enc"))
	if err != nil || !strings.Contains(out, msg) {
		t.Fatalf("encrypted image ran: %q, %v", out, err)
	}
	if !strings.Contains(cd.Proc.Log(), "layer pulled and verified") {
		t.Error("cocoond did not pull the encrypted layers itself")
	}

	for _, tc := range []struct {
		name, kid, want string
	}{
		{"missing key", "kbs:///default/image-kek/absent", "kbs:///default/image-kek/absent"},
		{"wrong key", "kbs:///default/image-kek/other", "wrong key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A fresh plain image, so that no layer is already committed.
			fresh, _ := pushTwoLayerImage(t, ctx, env, reg, "e2e/fresh-"+strings.ReplaceAll(tc.name, " ", "-"), imageOptions{})
			dst := reg.Ref("e2e/enc-"+strings.ReplaceAll(tc.name, " ", "-"), "encrypted")
			encryptImage(t, ctx, env, kek, tc.kid, fresh.Ref, dst)
			_, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", dst)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pull error = %v, want one containing %q", err, tc.want)
			}
			committed := committedSnapshots(t, ctx, ctrd, "cocoon")
			for _, id := range fresh.ChainIDs()[1:] {
				for _, c := range committed {
					if c == id {
						t.Errorf("layer %s committed although its key was refused", id)
					}
				}
			}
		})
	}
}
