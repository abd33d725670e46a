package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// TestUnlabelledLayersRefusedUnderPolicy: with an image security policy
// configured, `ctr image pull --local` (the client-side pull, whose layer
// Prepares carry no CRI labels) of an image the policy rejects fails with
// an error naming the missing labels and the containerd setting, and none
// of its layers is committed. With [snapshotter] allow_unlabelled_layers =
// true the old behaviour (containerd applies the layers unverified) comes
// back, explicitly.
func TestUnlabelledLayersRefusedUnderPolicy(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_unlabelled_layers=%v", allow), func(t *testing.T) {
			env := newEnv(t)
			ctx := testContext(t, 5*time.Minute)
			reg, err := env.StartRegistry(ctx)
			if err != nil {
				t.Fatal(err)
			}
			kbs, err := env.StartKBS(ctx, harness.KBSOptions{
				Policy:    harness.AllowAllPolicy,
				Resources: map[string][]byte{"default/image-policy/1": []byte(`{"default":[{"type":"reject"}]}`)},
			})
			if err != nil {
				t.Fatal(err)
			}
			cdh := env.Path("cdh.toml")
			if err := os.WriteFile(cdh, []byte(fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/1\"\n", kbs.URL)), 0o600); err != nil {
				t.Fatal(err)
			}
			cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
				InsecureRegistries: []string{reg.Host},
				Config:             fmt.Sprintf("[snapshotter]\nallow_unlabelled_layers = %v\n", allow),
				ExtraArgs:          []string{"--tee", "sample", "--cdh-config", cdh},
			})
			if err != nil {
				t.Fatal(err)
			}
			ctrd := startContainerdFor(t, ctx, env, cd)
			im, _ := pushTwoLayerImage(t, ctx, env, reg, "protected/app", imageOptions{})

			_, err = ctrd.Ctr(ctx, "image", "pull", "--local", "--plain-http", "--snapshotter", snapshotterName, im.Ref)
			committed := committedSnapshots(t, ctx, ctrd, snapshotterName)
			if allow {
				if err != nil {
					t.Fatalf("pull --local with allow_unlabelled_layers = true: %v", err)
				}
				for _, id := range im.ChainIDs() {
					if !slices.Contains(committed, id) {
						t.Errorf("layer %s not committed; committed: %v", id, committed)
					}
				}
				return
			}
			if err == nil {
				t.Fatal("pull --local of a policy-protected image succeeded: containerd applied unverified layers")
			}
			t.Logf("refused as expected: %s", ctrReason(err))
			for _, want := range []string{"containerd.io/snapshot/cri.image-ref", "containerd.io/snapshot/cri.manifest-digest",
				"containerd.io/snapshot/cri.layer-digest", "enable_remote_snapshot_annotations", "disable_snapshot_annotations = false", "allow_unlabelled_layers"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("pull error does not name %q: %v", want, ctrReason(err))
				}
			}
			for _, id := range im.ChainIDs() {
				if slices.Contains(committed, id) {
					t.Errorf("layer %s of the refused pull was committed", id)
				}
			}
			// cocoond's own store holds nothing either (containerd's view
			// could hide a snapshot committed under another namespace).
			entries, err := os.ReadDir(filepath.Join(cd.Root, "snapshotter", "snapshots"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf("cocoond's store holds %d snapshot directories after the refused pull", len(entries))
			}
		})
	}
}
