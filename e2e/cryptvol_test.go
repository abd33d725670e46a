package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// volumeCLI runs cocoonctl volume subcommands.
func volumeCLI(t *testing.T, ctx context.Context, env *harness.Env, args ...string) string {
	t.Helper()
	bin, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, append([]string{"volume"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("cocoonctl volume %v: %v: %s", args, err, out)
	}
	return string(out)
}

// destroyVolume tears an encrypted volume down at the end of the test; it
// must run before the harness removes the work directory.
func destroyVolume(t *testing.T, env *harness.Env, mnt string) {
	t.Cleanup(func() {
		bin, err := env.CocoonBinary("cocoonctl")
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, bin, "volume", "destroy", mnt).CombinedOutput(); err != nil {
			t.Errorf("cocoonctl volume destroy %s: %v: %s", mnt, err, out)
		}
	})
}

func fileContains(t *testing.T, path string, marker []byte) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, marker)
}

// TestEncryptedScratchVolumeInContainer: a container run by containerd and
// runc writes into an ephemeral LUKS2 volume (random key and header in
// memory, ciphertext in a file on host disk); the data reads back through
// the mount and never appears in the backing file.
func TestEncryptedScratchVolumeInContainer(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	st := startCocoonStack(t, ctx, env)
	backing, mnt := env.Path("scratch.img"), env.Path("scratch")
	volumeCLI(t, ctx, env, "create", "--backing", backing, "--size", "256M", "--mount", mnt)
	destroyVolume(t, env, mnt)

	im, _ := pushTwoLayerImage(t, ctx, env, st.reg, "e2e/scratch", imageOptions{})
	if _, err := st.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref); err != nil {
		t.Fatal(err)
	}
	marker := "confidential-scratch-" + randomToken(t)
	if _, err := st.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon",
		"--mount", "type=bind,src="+mnt+",dst=/scratch,options=rbind:rw",
		im.Ref, containerID(t, "scratch"), "/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo "+marker+"; done > /scratch/data && sync"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "data"))
	if err != nil || !strings.Contains(string(b), marker) {
		t.Fatalf("data written by the container: %q, %v", b, err)
	}
	syscall.Sync()
	if fileContains(t, backing, []byte(marker)) {
		t.Error("the backing file holds the plaintext the container wrote")
	}
}

// TestStorageVolume: cocoond keeps its image storage on an encrypted volume
// (--storage-volume); image content never appears in the backing file, and
// a kill -9 and restart finds the volume mounted and restores it.
func TestStorageVolume(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backing := env.Path("storage.img")
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host},
		ExtraArgs:          []string{"--storage-volume", backing, "--storage-volume-size", "1G"},
	})
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(cd.Root, "storage")
	destroyVolume(t, env, mnt)
	ctrd := startContainerdFor(t, ctx, env, cd)
	im, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/storage", imageOptions{})
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref); err != nil {
		t.Fatal(err)
	}
	run := func(suffix string) {
		t.Helper()
		out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", im.Ref, containerID(t, suffix))
		if err != nil || !strings.Contains(out, msg) {
			t.Fatalf("run: %q, %v", out, err)
		}
	}
	run("before")
	mounts, err := harness.MountsUnder(cd.Root)
	if err != nil || len(mounts) == 0 {
		t.Fatalf("no mount under cocoond's root: %v %v", mounts, err)
	}
	syscall.Sync()
	token := []byte(strings.TrimPrefix(msg, "hello from layer 2, token "))
	if fileContains(t, backing, token) {
		t.Error("the storage volume's backing file holds image content in plaintext")
	}

	if err := cd.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cd.Proc.Log(), "encrypted storage volume restored") {
		t.Error("restart did not restore the mounted storage volume")
	}
	run("after")
}
