package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGuestPullCutsEndlessLayerStream: a proxy in front of the registry
// follows the top layer blob with gzip members that never end. Pulling
// through cocoond fails with a size error, cocoond reads at most one byte
// past the descriptor's size (the proxy can only fill socket buffers), no
// snapshot of the layer is committed, and the image pulls and runs once the
// proxy behaves.
func TestGuestPullCutsEndlessLayerStream(t *testing.T) {
	env := newEnv(t)
	ctx := testContext(t, 5*time.Minute)
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := reg.StartTamperProxy()
	if err != nil {
		t.Fatal(err)
	}
	s := startCocoonStackWithRegistry(t, ctx, env, reg, proxy.Host)
	im, msg := pushTwoLayerImage(t, ctx, env, reg, "e2e/endless", imageOptions{})
	top := im.Manifest.Layers[1]
	ref := proxy.Host + "/" + im.Repo + ":" + im.Tag

	proxy.AppendEndless(top.Digest, true)
	out, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, ref)
	if err == nil {
		t.Fatalf("pull of an endless layer stream succeeded:\n%s", out)
	}
	t.Logf("pull refused: %s", ctrReason(err))
	if !strings.Contains(err.Error(), "more than the descriptor's size") || !strings.Contains(err.Error(), strings.TrimPrefix(top.Digest, "sha256:")) {
		t.Errorf("pull error does not report the layer's size overrun:\n%v", err)
	}
	// What the proxy managed to write is the blob, one byte more read by
	// cocoond, and what loopback socket buffers hold; without the cut it
	// writes until the test times out.
	sent := proxy.Sent(top.Digest)
	t.Logf("hostile proxy sent %d bytes for a layer of descriptor size %d", sent, top.Size)
	if limit := top.Size + 64<<20; sent > limit {
		t.Errorf("the proxy sent %d bytes, more than the %d-byte layer plus 64 MiB of socket buffers", sent, top.Size)
	}
	if chain := im.ChainIDs()[1]; slices.Contains(committedSnapshots(t, ctx, s.ctrd, snapshotterName), chain) {
		t.Errorf("snapshot %s of the endless layer was committed", chain)
	}

	proxy.AppendEndless(top.Digest, false)
	if _, err := s.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", snapshotterName, ref); err != nil {
		t.Fatalf("pull once the proxy behaves: %v", err)
	}
	out, err = s.ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", snapshotterName, ref, containerID(t, "run"), "/bin/cat", "/layer2/message")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, msg) {
		t.Errorf("container printed %q, want %q", out, msg)
	}
}
