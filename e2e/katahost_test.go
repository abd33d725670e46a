package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/e2e/harness"
)

// kataHandler is the CRI runtime handler standing in for Kata: the runc
// shim, with cocoon (kata-host mode) as its snapshotter.
const kataHandler = "kata"

// TestKataHostCRI: cocoond --mode kata-host behind containerd's CRI
// plugin, driven by crictl, with both containerd 2.x configurations found
// in the field (the runtime's snapshotter alone, and with the images
// plugin's runtime_platforms entry as kata-deploy writes it).
//
// What CRI hands the runtime is observed where the runtime receives it:
// the runc shim mounts each container's rootfs through mount.fuse and
// cocoon's helper, which logs the mount it got (COCOON_MOUNT_HELPER_LOG).
// An image pulled for the Kata handler is recorded without a layer blob
// on the host, and its container's rootfs carries a KataVirtualVolume
// passing the three validators' rules (checkKataRootfs), naming the image;
// the pause image, which containerd applied itself (ctr --local, as another
// snapshotter's layers), gets the fallback mount and runs under runc, as
// does a busybox container on it. Before allow_unlabelled_layers, that
// unlabelled pull is refused naming the containerd setting. After cocoond
// lost its metadata store, another container of the image is created (no
// "missing parent").
func TestKataHostCRI(t *testing.T) {
	for _, v := range []string{"runtime-snapshotter", "runtime-platforms"} {
		t.Run(v, func(t *testing.T) { testKataHostCRI(t, v == "runtime-platforms") })
	}
}

func testKataHostCRI(t *testing.T, runtimePlatforms bool) {
	env := newEnv(t)
	ctx := testContext(t, 10*time.Minute)
	if _, err := os.Stat(env.Tool("crictl")); err != nil {
		t.Fatalf("crictl missing (run `make e2e-tools`): %v", err)
	}
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pause := pushPauseImage(t, ctx, env, reg)
	app := pushGuestOnlyImage(t, ctx, env, reg)

	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{Config: "mode = \"kata-host\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	helperLog := env.Path("mount-helper.log")
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{
		Fragments: []string{kataHostFragment(t, ctx, cd, runtimePlatforms)},
		CRI:       &harness.CRIOptions{SandboxImage: pause.Ref, PlainHTTP: []string{reg.Host}},
		PathDirs:  []string{mountHelperDir(t, env)},
		Env:       []string{"COCOON_MOUNT_HELPER_LOG=" + helperLog},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The pause image comes without CRI labels (client-side unpack):
	// refused, naming the setting, until allow_unlabelled_layers.
	pull := []string{"-n", "k8s.io", "images", "pull", "--local", "--snapshotter", "cocoon", "--plain-http", pause.Ref}
	if out, err := ctrd.Ctr(ctx, pull...); err == nil || !strings.Contains(err.Error(), "disable_snapshot_annotations = false") {
		t.Fatalf("unlabelled pull in kata-host mode: %v %s; want a refusal naming disable_snapshot_annotations", err, out)
	}
	restartCocoond(t, ctx, env, cd, ctrd, "mode = \"kata-host\"\n[snapshotter]\nallow_unlabelled_layers = true\n")
	if out, err := ctrd.Ctr(ctx, pull...); err != nil {
		t.Fatalf("ctr pull --local of the pause image: %v %s", err, out)
	}

	podName := "kata-" + randomToken(t)[:6]
	podCfg, err := ctrd.PodConfig(podName+"-pull", kataHandler)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ctrd.Crictl(ctx, "pull", "--pod-config", podCfg, app.Ref); err != nil {
		t.Fatalf("crictl pull for handler %s: %v %s", kataHandler, err, out)
	}
	assertNoLayerBlobs(t, ctx, ctrd, app, "k8s.io")

	podID, podConfig, err := ctrd.PodSandboxWith(ctx, podName, kataHandler)
	if err != nil {
		t.Fatalf("pod with handler %s (pause under runc through the helper): %v", kataHandler, err)
	}
	pauseMount := helperMount(t, helperLog, podID)
	if v, err := checkKataRootfs(1, pauseMount.Type, pauseMount.Options); err != nil {
		t.Errorf("pause rootfs: %v", err)
	} else if v.ImagePull.Metadata["cocoon.io/kata-fallback"] != "true" {
		t.Errorf("pause rootfs (layers containerd applied) has metadata %v, want the fallback mark", v.ImagePull.Metadata)
	}

	// A runc container with content on the same snapshotter.
	hello, err := ctrd.CreateContainer(ctx, podID, podConfig, "hello", pause.Ref, "/bin/echo", "hello-from-runc")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ctrd.Crictl(ctx, "start", hello); err != nil {
		t.Fatalf("start a runc container on cocoon: %v %s", err, out)
	}
	waitContainerLog(t, ctx, ctrd, hello, "hello-from-runc")

	// The guest-pulled image's container: what the runtime gets.
	appID, err := ctrd.CreateContainer(ctx, podID, podConfig, "app", app.Ref)
	if err != nil {
		t.Fatal(err)
	}
	// The shim mounts the rootfs (the helper logs it), then runc finds no
	// program in the empty rootfs of a guest-pulled image; a Kata runtime
	// would hand the volume to its guest instead.
	if out, err := ctrd.Crictl(ctx, "start", appID); err != nil {
		t.Logf("start of the guest-pulled image's container under runc: %v %s", err, out)
	}
	appMount := helperMount(t, helperLog, appID)
	v, err := checkKataRootfs(1, appMount.Type, appMount.Options)
	if err != nil {
		t.Fatalf("app rootfs %+v: %v", appMount, err)
	}
	md := v.ImagePull.Metadata
	if *v.Source != app.Ref || md["containerd.io/snapshot/cri.image-ref"] != app.Ref ||
		md["containerd.io/snapshot/cri.layer-digest"] != app.LayerDigests()[1] || md["cocoon.io/kata-fallback"] != "" {
		t.Errorf("app volume source %q metadata %v; want the image %s and its top layer %s", *v.Source, md, app.Ref, app.LayerDigests()[1])
	}

	// cocoond loses its metadata store: containerd still names the image's
	// layers as parents, and the next container is created all the same.
	if err := cd.Proc.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cd.Root, "snapshotter", "metadata.db")); err != nil {
		t.Fatal(err)
	}
	restartCocoond(t, ctx, env, cd, ctrd, "mode = \"kata-host\"\n[snapshotter]\nallow_unlabelled_layers = true\n")
	again, err := ctrd.CreateContainer(ctx, podID, podConfig, "app-again", app.Ref)
	if err != nil {
		t.Fatalf("container after cocoond lost its metadata store: %v", err)
	}
	if out, err := ctrd.Crictl(ctx, "start", again); err != nil {
		t.Logf("start under runc: %v %s", err, out)
	}
	m := helperMount(t, helperLog, again)
	if _, err := checkKataRootfs(1, m.Type, m.Options); err != nil {
		t.Errorf("rootfs after the metadata store was lost: %v", err)
	}
	if !strings.Contains(cd.Proc.Log(), "recreated as an empty kata-host layer") {
		t.Error("cocoond did not recreate the lost parent (did the store survive?)")
	}
	assertNoLayerBlobs(t, ctx, ctrd, app, "k8s.io")
}

// kataHostFragment is the drop-in `cocoonctl containerd-config --mode
// kata-host` prints for the kata handler (as the README and the installer
// use it), with the handler's runtime type (the runc shim here, kata-deploy's
// entry on a real node), keeping the images plugin's runtime_platforms entry
// or not. Its `version` line goes: the harness appends it to a config that
// has its own.
func kataHostFragment(t *testing.T, ctx context.Context, cd *harness.Cocoond, runtimePlatforms bool) string {
	t.Helper()
	frag, err := cd.ContainerdConfig(ctx, "--mode", "kata-host", "--runtime-handler", kataHandler)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(frag, "version = 3\n") && !strings.Contains(frag, "\nversion = 3\n") {
		t.Fatalf("the kata-host drop-in is not a version 3 configuration:\n%s", frag)
	}
	frag = strings.Replace(frag, "version = 3\n", "", 1)
	runtime := fmt.Sprintf("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.%s]\n", kataHandler)
	platforms := fmt.Sprintf("[plugins.\"io.containerd.cri.v1.images\".runtime_platforms.%s]\n  snapshotter = \"cocoon\"\n", kataHandler)
	if !strings.Contains(frag, runtime) || !strings.Contains(frag, platforms) {
		t.Fatalf("cocoonctl fragment lacks the runtime or runtime_platforms section:\n%s", frag)
	}
	frag = strings.Replace(frag, runtime, runtime+"  runtime_type = \"io.containerd.runc.v2\"\n", 1)
	if !runtimePlatforms {
		frag = strings.Replace(frag, platforms, "", 1)
	}
	return frag
}

// mountHelperDir holds nydus-overlayfs-cocoon for mount.fuse to run and,
// where fuse's mount.fuse is not installed, the helper standing in for it
// (it reads containerd's helper arguments).
func mountHelperDir(t *testing.T, env *harness.Env) string {
	t.Helper()
	helper, err := env.CocoonBinary("nydus-overlayfs-cocoon")
	if err != nil {
		t.Fatal(err)
	}
	dir := env.Path("mount-helpers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	names := []string{"nydus-overlayfs-cocoon"}
	if _, err := exec.LookPath("mount.fuse"); err != nil {
		t.Log("mount.fuse not installed: the helper stands in for it")
		names = append(names, "mount.fuse")
	}
	for _, n := range names {
		if err := os.Symlink(helper, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// restartCocoond stops cocoond (unless stopped) and starts it again with a config,
// then waits until containerd's proxy plugin reaches it again (its gRPC
// connection may be backing off from the restart).
func restartCocoond(t *testing.T, ctx context.Context, env *harness.Env, cd *harness.Cocoond, ctrd *harness.Containerd, cfg string) {
	t.Helper()
	if !cd.Proc.Exited() {
		if err := cd.Proc.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(env.Path("cocoon", "cocoond.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := ctrd.Ctr(ctx, "-n", "k8s.io", "snapshots", "--snapshotter", "cocoon", "ls")
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("containerd does not reach the restarted cocoond: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// loggedMount is one call of the mount helper.
type loggedMount struct {
	Args    []string `json:"args"`
	Target  string   `json:"target"`
	Options []string `json:"options"`
	Type    string   `json:"-"`
}

// helperMount returns the helper's call for container id's rootfs (the
// shim mounts it under a directory named by the ID), with its type as
// containerd named it ("fuse." + the -t or mount.fuse's program); repeated
// calls must carry the same options.
func helperMount(t *testing.T, logPath, id string) loggedMount {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatalf("mount helper log: %v", err)
	}
	defer f.Close()
	var found []loggedMount
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m loggedMount
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("helper log line %q: %v", sc.Text(), err)
		}
		if strings.Contains(m.Target, id) {
			m.Type = "fuse.nydus-overlayfs-cocoon"
			for i, a := range m.Args {
				if a == "-t" && i+1 < len(m.Args) {
					m.Type = "fuse." + m.Args[i+1]
				}
			}
			found = append(found, m)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	// The shim may run the helper more than once for one mount: containerd
	// retries a helper whose wait ended in ECHILD (the shim reaps
	// children), see mountWithHelper in core/mount/mount_linux.go.
	if len(found) == 0 {
		t.Fatalf("no mount helper call for %s", id)
	}
	for _, m := range found[1:] {
		if !slices.Equal(m.Options, found[0].Options) {
			t.Fatalf("mount helper calls for %s differ: %+v", id, found)
		}
	}
	return found[0]
}

// waitContainerLog waits until the container has exited and its log (which
// containerd may still be copying when the exit is reported) holds want.
func waitContainerLog(t *testing.T, ctx context.Context, ctrd *harness.Containerd, id, want string) {
	t.Helper()
	var state, logs string
	for {
		out, err := ctrd.Crictl(ctx, "inspect", "-o", "go-template", "--template", "{{.status.state}}", id)
		if err != nil {
			t.Fatal(err)
		}
		state = strings.TrimSpace(out)
		if state == "CONTAINER_EXITED" {
			if logs, err = ctrd.Crictl(ctx, "logs", id); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(logs, want) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container %s: state %s, log %q; want it exited with %q in its log", id, state, logs, want)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pushGuestOnlyImage pushes a two-layer image sharing no layer with the
// pause image, so that none of its blobs has a reason to be on the host.
func pushGuestOnlyImage(t *testing.T, ctx context.Context, env *harness.Env, reg *harness.Registry) *harness.Image {
	t.Helper()
	var layers []string
	for i, l := range []*harness.Layer{
		harness.NewLayer().Dir("app/").File("app/data", []byte("base "+randomToken(t)), 0o644),
		harness.NewLayer().Dir("app/").File("app/message", []byte("top "+randomToken(t)), 0o644),
	} {
		p := env.Path(fmt.Sprintf("guest-only-%d.tar", i))
		if err := l.WriteFile(p, harness.Uncompressed); err != nil {
			t.Fatal(err)
		}
		layers = append(layers, p)
	}
	im, err := reg.Push(ctx, harness.ImageSpec{Repo: "kata/app", Tag: "v1", Layers: layers, Cmd: []string{"/app/run"}})
	if err != nil {
		t.Fatal(err)
	}
	return im
}
