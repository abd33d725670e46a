package bundle_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cocoon-cc/cocoon/image/convert"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/encrypt"
	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/signature"
	"github.com/cocoon-cc/cocoon/internal/regtest"
	"github.com/cocoon-cc/cocoon/kata/bundle"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/label"
	"github.com/cocoon-cc/cocoon/snapshotter/lazysource"
	"github.com/cocoon-cc/cocoon/snapshotter/pullsource"
)

// The Puller plugs into kata/cdh as its ImagePuller (that interface's
// method, restated here).
var _ interface {
	PullImage(ctx context.Context, imageURL, bundlePath string) (manifestDigest string, err error)
} = (*bundle.Puller)(nil)

// policy is a test double of the image security policy: it refuses the
// repositories listed and records every reference it was asked about.
type policy struct {
	mu      sync.Mutex
	refused map[string]bool // repository (host/path)
	asked   []string
}

func (p *policy) Check(_ context.Context, ref string, _ digest.Digest) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = append(p.asked, ref)
	repo, _, _ := strings.Cut(ref, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	if p.refused[repo] {
		return &signature.RejectedError{Rule: "reject", Image: ref, Reason: "test"}
	}
	return nil
}

func (p *policy) askedAbout(ref string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.asked {
		if a == ref {
			return true
		}
	}
	return false
}

// kek serves the one KEK test images are encrypted for.
type kek struct {
	kid string
	key []byte
}

func (k kek) GetResource(_ context.Context, uri string) ([]byte, error) {
	if uri != k.kid {
		return nil, fmt.Errorf("resource %s: %w", uri, errdefs.ErrNotFound)
	}
	return bytes.Clone(k.key), nil
}

type fixture struct {
	reg    *regtest.Registry
	sn     *snapshotter.Snapshotter
	bp     *bundle.Puller
	policy *policy
	kek    kek
	dir    string

	mu    sync.Mutex
	blobs []string // paths of blob GETs
}

func newFixture(t *testing.T) *fixture { return newFixtureWith(t, false) }

// newFixtureWith builds the fixture; lazy serves eStargz layers through
// the in-process lazy FUSE mounter (snapshotter/lazysource), as cocoond
// does with [lazy] detached = false.
func newFixtureWith(t *testing.T, lazy bool) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests mount overlayfs and need root (CI runs them as root)")
	}
	ctx := context.Background()
	f := &fixture{reg: regtest.Start(t), policy: &policy{refused: map[string]bool{}}, dir: t.TempDir()}
	f.kek = kek{kid: "kbs:///default/test/kek", key: bytes.Repeat([]byte{7}, decrypt.KEKSize)}
	hook := func(_ http.ResponseWriter, r *http.Request) bool {
		f.mu.Lock()
		f.blobs = append(f.blobs, r.URL.Path)
		f.mu.Unlock()
		return false
	}
	f.reg.Hook.Store(&hook)
	client := registry.New(registry.Options{Insecure: []string{f.reg.Host}, Retries: 1})
	p, err := pull.New(pull.Options{
		Registry: client, StagingDir: filepath.Join(f.dir, "staging"),
		Policy: f.policy, Decrypt: decrypt.Options{Resources: f.kek},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sopts := snapshotter.Options{Root: filepath.Join(f.dir, "sn"), Layers: pullsource.New(p), RequireLabels: true}
	if lazy {
		m, err := lazysource.New(lazysource.Options{Registry: client, CacheDir: filepath.Join(f.dir, "lazy")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() }) // after the snapshotter's Close below
		sopts.Lazy = m
	}
	sn, err := snapshotter.New(ctx, sopts)
	if err != nil {
		t.Fatal(err)
	}
	f.sn = sn
	bp, err := bundle.New(bundle.Options{Snapshotter: sn, Registry: client})
	if err != nil {
		t.Fatal(err)
	}
	f.bp = bp
	t.Cleanup(func() {
		// Bundle rootfs overlays a failing test left go first; the lazy
		// mounter unmounts its FUSE layers itself.
		mounts, _ := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) {
			return !strings.HasPrefix(m.Mountpoint, f.dir+"/") || m.FSType != "overlay", false
		})
		for i := len(mounts) - 1; i >= 0; i-- {
			if err := mount.UnmountAll(mounts[i].Mountpoint, 0); err != nil {
				t.Errorf("unmount %s: %v", mounts[i].Mountpoint, err)
			}
		}
		sn.Close()
	})
	return f
}

// layerFetches counts blob GETs for the given layer digests.
func (f *fixture) layerFetches(layers []v1.Hash) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range f.blobs {
		for _, l := range layers {
			if strings.HasSuffix(p, l.String()) {
				n++
			}
		}
	}
	return n
}

// push builds a linux/amd64 image from layer tars with the given config
// and pushes it as host/repo:v1.
func (f *fixture) push(t *testing.T, repo string, cfg v1.Config, layers ...[]byte) (string, v1.Image) {
	t.Helper()
	img := regtest.Image(t, compression.GZip, true, layers...)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return f.reg.Write(t, repo, img), img
}

// pushEncrypted encrypts img for the fixture's KEK and pushes it.
func (f *fixture) pushEncrypted(t *testing.T, repo string, img v1.Image) (string, v1.Image) {
	t.Helper()
	enc, err := encrypt.Image(context.Background(), img, encrypt.Options{KEK: f.kek.key, KID: f.kek.kid, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(enc.Close)
	encImg, err := enc.Image()
	if err != nil {
		t.Fatal(err)
	}
	return f.reg.Write(t, repo, encImg), encImg
}

// bundleSnapshots lists the active snapshots of bundles.
func (f *fixture) bundleSnapshots(t *testing.T) []string {
	t.Helper()
	var keys []string
	err := f.sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive {
			if info.Labels[label.Bundle] == "" {
				t.Errorf("active snapshot %q without the bundle label left behind", info.Name)
			}
			keys = append(keys, info.Name)
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: an empty store
		t.Fatal(err)
	}
	return keys
}

// assertNothingLeft checks that a failed pull left no mount under dir, no
// active snapshot, and dir as it was (absent, or empty).
func (f *fixture) assertNothingLeft(t *testing.T, dir string, existed bool) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) > 0 {
		t.Errorf("mounts left under %s: %+v", dir, mounts[0])
	}
	if keys := f.bundleSnapshots(t); len(keys) > 0 {
		t.Errorf("active snapshots left: %v", keys)
	}
	entries, err := os.ReadDir(dir)
	switch {
	case existed && err != nil:
		t.Errorf("bundle directory that existed before is gone: %v", err)
	case existed && len(entries) > 0:
		t.Errorf("bundle directory not empty: %v", entries)
	case !existed && !errors.Is(err, os.ErrNotExist):
		t.Errorf("bundle directory created by the failed pull is still there (%v, %v)", entries, err)
	}
}

func readSpec(t *testing.T, bundleDir string) specs.Spec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(bundleDir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	ok, err := mountinfo.Mounted(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return ok
}

var appConfig = v1.Config{
	Entrypoint: []string{"/bin/app"},
	Cmd:        []string{"--serve", "x"},
	Env:        []string{"PATH=/bin", "GREETING=hello"},
	WorkingDir: "/srv",
	User:       "app",
	Labels:     map[string]string{"org.example": "yes"},
}

func appLayers(t *testing.T) [][]byte {
	return [][]byte{
		regtest.Tar(t,
			regtest.Entry{Name: "etc/", Type: tar.TypeDir},
			regtest.Entry{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n"},
			regtest.Entry{Name: "etc/group", Body: "root:x:0:\napp:x:1001:\nwheel:x:10:app\n"},
			regtest.Entry{Name: "gone", Body: "lower\n"},
			regtest.Entry{Name: "srv/", Type: tar.TypeDir},
		),
		regtest.Tar(t,
			regtest.Entry{Name: "srv/hello", Body: "hello from layer 2\n"},
			regtest.Entry{Name: ".wh.gone"},
		),
	}
}

func TestPullImageIntoBundle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref, img := f.push(t, "app", appConfig, appLayers(t)...)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var layerDigests []v1.Hash
	for _, l := range m.Layers {
		layerDigests = append(layerDigests, l.Digest)
	}

	dir := filepath.Join(f.dir, "bundles", "one") // created by PullImage, as image-rs does
	got, err := f.bp.PullImage(ctx, ref, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("manifest digest = %s, want %s", got, want)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if !isMounted(t, rootfs) {
		t.Fatalf("%s is not a mount point", rootfs)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "srv/hello")); err != nil || string(b) != "hello from layer 2\n" {
		t.Errorf("srv/hello = %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("whiteout did not hide the lower file: %v", err)
	}
	// The rootfs is writable (the bundle's own upper layer).
	if err := os.WriteFile(filepath.Join(rootfs, "srv/new"), []byte("w"), 0o644); err != nil {
		t.Errorf("rootfs not writable: %v", err)
	}

	s := readSpec(t, dir)
	if !reflect.DeepEqual(s.Process.Args, []string{"/bin/app", "--serve", "x"}) {
		t.Errorf("args = %v", s.Process.Args)
	}
	if !reflect.DeepEqual(s.Process.Env, appConfig.Env) || s.Process.Cwd != "/srv" {
		t.Errorf("env = %v, cwd = %q", s.Process.Env, s.Process.Cwd)
	}
	if u := s.Process.User; u.UID != 1000 || u.GID != 1001 || !reflect.DeepEqual(u.AdditionalGids, []uint32{10}) {
		t.Errorf("user = %+v, want app (1000:1001, groups [10])", u)
	}
	if s.Hostname != "image-rs" || s.Root.Path != "rootfs" || s.Annotations["org.example"] != "yes" ||
		s.Annotations["org.opencontainers.image.os"] != "linux" {
		t.Errorf("hostname %q, root %+v, annotations %v", s.Hostname, s.Root, s.Annotations)
	}
	if n := f.layerFetches(layerDigests); n != 2 {
		t.Errorf("first pull fetched layer blobs %d times, want 2", n)
	}

	// Again, by digest, into another bundle: the committed layers are
	// reused (no layer fetched) and the image is checked by the policy.
	byDigest := fmt.Sprintf("%s/app@%s", f.reg.Host, want)
	dir2 := filepath.Join(f.dir, "bundles", "two")
	if err := os.MkdirAll(dir2, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := f.bp.PullImage(ctx, byDigest, dir2); err != nil || got != want.String() {
		t.Fatalf("second pull = %s, %v", got, err)
	}
	if n := f.layerFetches(layerDigests); n != 2 {
		t.Errorf("second pull fetched layers again: %d layer GETs in all, want 2", n)
	}
	if !f.policy.askedAbout(byDigest) {
		t.Errorf("the policy was not asked about %s (asked: %v)", byDigest, f.policy.asked)
	}
	if _, err := os.Stat(filepath.Join(dir2, "rootfs/srv/new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a write in one bundle shows in another: %v", err)
	}
	if len(f.bundleSnapshots(t)) != 2 {
		t.Errorf("want one active snapshot per bundle")
	}

	// A bundle is pulled into once.
	if _, err := f.bp.PullImage(ctx, ref, dir); !errdefs.IsAlreadyExists(err) {
		t.Errorf("pull into a used bundle: error = %v, want AlreadyExists", err)
	}
	if !isMounted(t, rootfs) || readSpec(t, dir).Hostname != "image-rs" {
		t.Errorf("the refused second pull disturbed the bundle")
	}

	// Remove undoes a pull, and is idempotent.
	for _, d := range []string{dir, dir2} {
		if err := f.bp.Remove(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := f.bp.Remove(ctx, d); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
	}
	f.assertNothingLeft(t, dir, true)
	f.assertNothingLeft(t, dir2, true)
	// The layers stay for the next pull.
	if _, err := f.bp.PullImage(ctx, ref, dir); err != nil {
		t.Fatal(err)
	}
	if n := f.layerFetches(layerDigests); n != 2 {
		t.Errorf("pull after Remove fetched layers again")
	}
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyRefusalLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	layers := appLayers(t)
	okRef, _ := f.push(t, "accepted", appConfig, layers...)
	badRef, _ := f.push(t, "refused", appConfig, layers...)
	f.policy.refused[f.reg.Host+"/refused"] = true

	for _, existed := range []bool{false, true} {
		t.Run(fmt.Sprintf("fresh layers, bundle dir existed=%v", existed), func(t *testing.T) {
			dir := filepath.Join(f.dir, fmt.Sprintf("fresh-%v", existed))
			if existed {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			_, err := f.bp.PullImage(ctx, badRef, dir)
			// image-rs's message, which CDH answers after "Image Pull error: ".
			want := fmt.Sprintf("Failed to pull image %s from all mirror/mapping locations or original location: "+
				"image: %s, error: Image policy rejected: Denied by policy: Policy `reject` rejects image %s", badRef, badRef, badRef)
			var pe *bundle.PullError
			if !errdefs.IsPermissionDenied(err) || !errors.As(err, &pe) || err.Error() != want {
				t.Fatalf("error = %v\nwant %s (PermissionDenied)", err, want)
			}
			f.assertNothingLeft(t, dir, existed)
		})
	}

	// The same layers committed for an accepted image do not let the
	// refused one through: each layer's Prepare checks this image.
	okDir := filepath.Join(f.dir, "ok")
	if _, err := f.bp.PullImage(ctx, okRef, okDir); err != nil {
		t.Fatal(err)
	}
	// A refused image never seen before (no cached verdict), on layers
	// all committed: its Prepares ask the policy.
	newRef, _ := f.push(t, "refused-too", appConfig, layers...)
	f.policy.refused[f.reg.Host+"/refused-too"] = true
	dir := filepath.Join(f.dir, "reuse")
	_, err := f.bp.PullImage(ctx, newRef, dir)
	if !errdefs.IsPermissionDenied(err) {
		t.Fatalf("refused image on committed layers: error = %v, want PermissionDenied", err)
	}
	if !f.policy.askedAbout(newRef) {
		t.Errorf("the policy was not asked about %s", newRef)
	}
	mounts, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if len(mounts) > 0 {
		t.Errorf("mounts left: %+v", mounts)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bundle dir left: %v", err)
	}
	if keys := f.bundleSnapshots(t); len(keys) != 1 {
		t.Errorf("active snapshots = %v, want only the accepted bundle's", keys)
	}
	if err := f.bp.Remove(ctx, okDir); err != nil {
		t.Fatal(err)
	}
}

func TestFailureAfterMountLeavesNothing(t *testing.T) {
	f := newFixture(t)
	cfg := appConfig
	cfg.User = "nobody" // not in the image's /etc/passwd: found only once the rootfs is mounted
	ref, _ := f.push(t, "nouser", cfg, appLayers(t)...)
	dir := filepath.Join(f.dir, "a", "b", "bundle")
	_, err := f.bp.PullImage(context.Background(), ref, dir)
	if err == nil || !strings.Contains(err.Error(), `no user "nobody"`) {
		t.Fatalf("error = %v", err)
	}
	f.assertNothingLeft(t, filepath.Join(f.dir, "a"), false)
}

func TestRefusesNonLinuxImage(t *testing.T) {
	f := newFixture(t)
	// regtest's images have no OS in their config, which image-rs refuses too.
	ref, _ := f.reg.Push(t, "noos", compression.GZip, true, appLayers(t)[0])
	dir := filepath.Join(f.dir, "noos")
	if _, err := f.bp.PullImage(context.Background(), ref, dir); err == nil || !strings.Contains(err.Error(), "unsupported OS") {
		t.Fatalf("error = %v", err)
	}
	f.assertNothingLeft(t, dir, false)
}

func TestEncryptedImage(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, plain := f.push(t, "plain", appConfig, appLayers(t)...)
	encRef, encImg := f.pushEncrypted(t, "secret", plain)
	want, err := encImg.Digest()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.dir, "enc")
	got, err := f.bp.PullImage(ctx, encRef, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("manifest digest = %s, want the encrypted image's %s", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs/srv/hello")); err != nil || string(b) != "hello from layer 2\n" {
		t.Errorf("decrypted srv/hello = %q, %v", b, err)
	}
	if s := readSpec(t, dir); !reflect.DeepEqual(s.Process.Args, []string{"/bin/app", "--serve", "x"}) {
		t.Errorf("args = %v", s.Process.Args)
	}

	// The plaintext image has the same chain IDs, but may not run on layers
	// decrypted from blobs it does not name.
	plainRef := f.reg.Write(t, "plain-copy", plain)
	plainDir := filepath.Join(f.dir, "plain")
	if _, err := f.bp.PullImage(ctx, plainRef, plainDir); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("plain image on decrypted layers: error = %v, want PermissionDenied", err)
	}
	if _, err := os.Stat(plainDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bundle dir left: %v", err)
	}
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
	f.assertNothingLeft(t, dir, true)
}

func TestPruneRemovesSnapshotsOfGoneBundles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref, _ := f.push(t, "app", appConfig, appLayers(t)...)
	kept := filepath.Join(f.dir, "kept")
	gone := filepath.Join(f.dir, "gone")
	for _, d := range []string{kept, gone} {
		if _, err := f.bp.PullImage(ctx, ref, d); err != nil {
			t.Fatal(err)
		}
	}
	// The Kata agent tears a container down by unmounting its rootfs and
	// deleting the bundle.
	if err := mount.UnmountAll(filepath.Join(gone, "rootfs"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
	if n := len(f.bundleSnapshots(t)); n != 2 {
		t.Fatalf("%d bundle snapshots before Prune, want 2", n)
	}
	if err := f.bp.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(f.bundleSnapshots(t)); n != 1 {
		t.Errorf("%d bundle snapshots after Prune, want 1 (the mounted bundle's)", n)
	}
	if !isMounted(t, filepath.Join(kept, "rootfs")) {
		t.Errorf("Prune touched a bundle still mounted")
	}
	// The gone bundle's path can be pulled into again.
	if _, err := f.bp.PullImage(ctx, ref, gone); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{kept, gone} {
		if err := f.bp.Remove(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadArguments(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct{ image, bundle string }{
		{"busybox", "relative/path"},
		{"busybox", "/"},
		{"UPPER/case", filepath.Join(f.dir, "x")},
		{"", filepath.Join(f.dir, "x")},
	} {
		if _, err := f.bp.PullImage(ctx, tc.image, tc.bundle); !errdefs.IsInvalidArgument(err) {
			t.Errorf("PullImage(%q, %q): error = %v, want InvalidArgument", tc.image, tc.bundle, err)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused call created the bundle")
	}
	if _, err := bundle.New(bundle.Options{}); err == nil {
		t.Errorf("New without a snapshotter succeeded")
	}
}

func TestLazyEStargzImage(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("lazy layers need /dev/fuse: %v", err)
	}
	f := newFixtureWith(t, true)
	ctx := context.Background()
	_, plain := f.push(t, "plain", appConfig, appLayers(t)...)
	conv, err := convert.Image(ctx, plain, convert.Options{TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conv.Close)
	img, err := conv.Image()
	if err != nil {
		t.Fatal(err)
	}
	ref := f.reg.Write(t, "estargz", img)
	dir := filepath.Join(f.dir, "lazy-bundle")
	if _, err := f.bp.PullImage(ctx, ref, dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs/srv/hello")); err != nil || string(b) != "hello from layer 2\n" {
		t.Errorf("srv/hello = %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "rootfs/gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("whiteout did not hide the lower file: %v", err)
	}
	// Every layer was committed lazily: served over FUSE, never fetched whole.
	lazy := 0
	err = f.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindCommitted && info.Labels[label.Lazy] != "" {
			lazy++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if lazy != 2 {
		t.Errorf("%d lazily served layers, want 2", lazy)
	}
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
	f.assertNothingLeft(t, dir, true)
}

func TestIndexAnswersThePlatformManifest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, here := f.push(t, "here", appConfig, appLayers(t)...)
	cfgOther := appConfig
	cfgOther.Cmd = []string{"other"}
	_, other := f.push(t, "other", cfgOther, appLayers(t)[0])
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: otherArch}}},
		mutate.IndexAddendum{Add: here, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	ref := fmt.Sprintf("%s/multi:v1", f.reg.Host)
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}
	want, err := here.Digest()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.dir, "multi")
	got, err := f.bp.PullImage(ctx, ref, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("manifest digest = %s, want this platform's manifest %s", got, want)
	}
	if args := readSpec(t, dir).Process.Args; !reflect.DeepEqual(args, []string{"/bin/app", "--serve", "x"}) {
		t.Errorf("args = %v: the config of another platform's image", args)
	}
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentPulls(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref, img := f.push(t, "app", appConfig, appLayers(t)...)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.bp.PullImage(ctx, ref, filepath.Join(f.dir, fmt.Sprint("b", i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	if got := f.layerFetches([]v1.Hash{m.Layers[0].Digest, m.Layers[1].Digest}); got != 2 {
		t.Errorf("%d concurrent pulls fetched layer blobs %d times, want each layer once", n, got)
	}
	for i := range n {
		if err := f.bp.Remove(ctx, filepath.Join(f.dir, fmt.Sprint("b", i))); err != nil {
			t.Error(err)
		}
	}
}

func TestRemoveRefusesABusyRootfs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref, _ := f.push(t, "app", appConfig, appLayers(t)...)
	dir := filepath.Join(f.dir, "busy")
	if _, err := f.bp.PullImage(ctx, ref, dir); err != nil {
		t.Fatal(err)
	}
	// A process still working in the rootfs, as a running container does.
	cmd := exec.Command("sleep", "600")
	cmd.Dir = filepath.Join(dir, "rootfs", "srv")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	if err := f.bp.Remove(ctx, dir); err == nil {
		t.Fatal("Remove unmounted a rootfs in use")
	}
	if !isMounted(t, filepath.Join(dir, "rootfs")) || readSpec(t, dir).Hostname != "image-rs" || len(f.bundleSnapshots(t)) != 1 {
		t.Errorf("a refused Remove took part of the bundle away")
	}
	stop()
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
	f.assertNothingLeft(t, dir, true)
}

// An image naming one blob at two positions (image-rs's tests pull such an
// image) pulls like any other.
func TestDuplicateLayers(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	l := appLayers(t)
	blank := regtest.Tar(t, regtest.Entry{Name: "srv/", Type: tar.TypeDir})
	ref, _ := f.push(t, "dup", appConfig, l[0], blank, l[1], blank)
	dir := filepath.Join(f.dir, "dup")
	if _, err := f.bp.PullImage(ctx, ref, dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs/srv/hello")); err != nil || string(b) != "hello from layer 2\n" {
		t.Errorf("srv/hello = %q, %v", b, err)
	}
	if err := f.bp.Remove(ctx, dir); err != nil {
		t.Fatal(err)
	}
}
