package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/pelletier/go-toml/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/cocoon-cc/cocoon/snapshotter"
)

// runAsCocoonctlIfRequested makes the test binary act as cocoonctl, for the
// installer script run by TestInstallerScript (TestMain calls it).
func runAsCocoonctlIfRequested() {
	if os.Getenv("COCOONCTL_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
}

// The CRI settings the kata-host fragment writes, as containerd v2.4.2
// declares them (internal/cri/config/config.go: ImageConfig, ImagePlatform,
// Runtime; internal, hence mirrored). Decoding strictly into these catches a
// misspelt key, which containerd would only log.
type strictCRIImages struct {
	DisableSnapshotAnnotations bool `toml:"disable_snapshot_annotations"`
	DiscardUnpackedLayers      bool `toml:"discard_unpacked_layers"`
	RuntimePlatforms           map[string]struct {
		Platform    string `toml:"platform"`
		Snapshotter string `toml:"snapshotter"`
	} `toml:"runtime_platforms"`
}

type strictCRIRuntime struct {
	Containerd struct {
		Runtimes map[string]struct {
			Type        string `toml:"runtime_type"`
			Snapshotter string `toml:"snapshotter"`
		} `toml:"runtimes"`
	} `toml:"containerd"`
}

// decodePlugin decodes a plugin's merged table strictly (containerd's
// Config.Decode, minus its fallback to lenient decoding).
func decodePlugin(t *testing.T, cfg *srvconfig.Config, id string, out any) {
	t.Helper()
	b, err := toml.Marshal(cfg.Plugins[id])
	if err != nil {
		t.Fatal(err)
	}
	if err := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(out); err != nil {
		t.Fatalf("plugin %s: %v\n%s", id, err, b)
	}
}

// TestKataHostDropInLoadsInContainerd loads the drop-in the way containerd
// 2.x does (its own config loader, through imports) on top of a main config
// holding kata-deploy's runtime entry: the handler keeps its runtime_type
// and gains the snapshotter.
func TestKataHostDropInLoadsInContainerd(t *testing.T) {
	dir := t.TempDir()
	var frag bytes.Buffer
	o := containerdConfigOptions{Address: "/run/cocoon/cocoon.sock", Version: "2", Name: "cocoon", Mode: modeKataHost,
		RuntimeHandler: "kata-qemu-coco-dev,kata-qemu-snp"}
	if err := writeContainerdConfig(&frag, o); err != nil {
		t.Fatal(err)
	}
	// Strictly, as containerd decodes each file before it falls back.
	if err := toml.NewDecoder(bytes.NewReader(frag.Bytes())).DisallowUnknownFields().Decode(&srvconfig.Config{}); err != nil {
		t.Fatalf("drop-in: %v", err)
	}
	main := fmt.Sprintf(`version = 3
imports = [%q]
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata-qemu-coco-dev]
  runtime_type = "io.containerd.kata-qemu-coco-dev.v2"
`, filepath.Join(dir, "conf.d", "*.toml"))
	writeFile(t, filepath.Join(dir, "config.toml"), main)
	writeFile(t, filepath.Join(dir, "conf.d", "cocoon.toml"), frag.String())
	cfg := &srvconfig.Config{Version: 3}
	if err := srvconfig.LoadConfig(context.Background(), filepath.Join(dir, "config.toml"), cfg); err != nil {
		t.Fatal(err)
	}
	if p := cfg.ProxyPlugins["cocoon"]; p.Type != "snapshot" || p.Address != o.Address {
		t.Errorf("proxy_plugins.cocoon = %+v", p)
	}
	var img strictCRIImages
	var rt strictCRIRuntime
	decodePlugin(t, cfg, "io.containerd.cri.v1.images", &img)
	decodePlugin(t, cfg, "io.containerd.cri.v1.runtime", &rt)
	if img.DisableSnapshotAnnotations || img.DiscardUnpackedLayers {
		t.Errorf("images plugin: %+v", img)
	}
	for _, h := range []string{"kata-qemu-coco-dev", "kata-qemu-snp"} {
		if img.RuntimePlatforms[h].Snapshotter != "cocoon" || rt.Containerd.Runtimes[h].Snapshotter != "cocoon" {
			t.Errorf("handler %s: runtime_platforms %+v, runtime %+v", h, img.RuntimePlatforms[h], rt.Containerd.Runtimes[h])
		}
	}
	if got := rt.Containerd.Runtimes["kata-qemu-coco-dev"].Type; got != "io.containerd.kata-qemu-coco-dev.v2" {
		t.Errorf("the drop-in lost kata-deploy's runtime_type: %q", got)
	}
	// cocoonctl doctor accepts what the installer writes.
	v, err := loadContainerdConfig(filepath.Join(dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []result{checkProxyPlugin(v, "cocoon", o.Address), checkCRILabels(v, "cocoon"), checkCRISnapshotter(v, "cocoon", "kata-qemu-coco-dev")} {
		if r.Status != statusOK {
			t.Errorf("doctor: %s", r)
		}
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// installEnv is a scratch node for cocoon-install.sh: a host root, the
// image's artifacts (this test binary standing in for cocoonctl) and a fake
// nsenter that logs the host commands.
type installEnv struct {
	root, artifacts, hostLog string
	env                      []string
}

func newInstallEnv(t *testing.T) *installEnv {
	t.Helper()
	dir := t.TempDir()
	e := &installEnv{root: filepath.Join(dir, "host"), artifacts: filepath.Join(dir, "artifacts"), hostLog: filepath.Join(dir, "host.log")}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(e.artifacts, "bin", "cocoonctl"), "#!/bin/sh\nCOCOONCTL_TEST_AS_MAIN=1 exec "+self+" \"$@\"\n")
	writeFile(t, filepath.Join(e.artifacts, "bin", "cocoond"), "#!/bin/sh\n")
	writeFile(t, filepath.Join(e.artifacts, "bin", snapshotter.KataHelperName), "#!/bin/sh\n")
	for _, f := range []string{"cocoond.service", "cocoond.toml"} {
		raw, err := os.ReadFile(filepath.Join(contribDir, "kata-host", f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(e.artifacts, "kata-host", f), string(raw))
	}
	fake := filepath.Join(dir, "nsenter")
	writeFile(t, fake, "#!/bin/sh\necho \"$*\" >>"+e.hostLog+"\n"+
		"[ \"$1\" = containerd ] && echo 'containerd github.com/containerd/containerd/v2 v2.4.2 0123abc'\nexit 0\n")
	bins, _ := filepath.Glob(filepath.Join(e.artifacts, "bin", "*"))
	for _, p := range append(bins, fake) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatal(err)
	}
	e.env = append(os.Environ(), "COCOON_HOST_ROOT="+e.root, "COCOON_ARTIFACTS="+e.artifacts,
		"COCOON_HOST_EXEC="+fake, "COCOON_RUNTIME_HANDLERS=kata-qemu-coco-dev,kata-qemu-tdx")
	return e
}

func (e *installEnv) run(t *testing.T, action string) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(kubeDir, "cocoon-install.sh"), action)
	cmd.Env = e.env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cocoon-install.sh %s: %v\n%s", action, err, out)
	}
}

// tree maps each file under the host root to its mode and content.
func (e *installEnv) tree(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(e.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(p)
		info, _ := d.Info()
		rel, _ := filepath.Rel(e.root, p)
		out["/"+filepath.ToSlash(rel)] = fmt.Sprintf("%v\n%s", info.Mode(), raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *installEnv) hostCommands(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(e.hostLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Remove(e.hostLog)
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

// TestInstallerScript runs contrib/kubernetes/cocoon-install.sh against a
// scratch host root for each shape of containerd config.toml it handles:
// install writes the unit, cocoond.toml and the drop-in and makes
// config.toml import it; a second install changes and restarts nothing;
// uninstall leaves the root as it found it.
func TestInstallerScript(t *testing.T) {
	if out, err := exec.Command("bash", "-n", filepath.Join(kubeDir, "cocoon-install.sh")).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	for name, conf := range map[string]string{
		"no config.toml":  "",
		"no imports":      "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.10\"\n",
		"empty imports":   "version = 3\nimports = []\n",
		"other imports":   "version = 3\nimports = [\"/etc/containerd/extra.toml\"] # site\n",
		"conf.d imported": "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := newInstallEnv(t)
			if conf != "" {
				writeFile(t, filepath.Join(e.root, "etc", "containerd", "config.toml"), conf)
			}
			before := e.tree(t)
			e.run(t, "install")
			first := e.tree(t)
			if cmds := e.hostCommands(t); !slices.Contains(cmds, "systemctl restart containerd.service") ||
				!slices.Contains(cmds, "systemctl restart cocoond.service") {
				t.Errorf("first install ran %q on the host", cmds)
			}
			checkInstalled(t, first)
			e.run(t, "install")
			if second := e.tree(t); !maps2Equal(first, second) {
				t.Errorf("a second install changed files")
			}
			if cmds := e.hostCommands(t); slices.ContainsFunc(cmds, func(c string) bool { return strings.Contains(c, "restart") }) {
				t.Errorf("a second install restarted services: %q", cmds)
			}
			e.run(t, "uninstall")
			if after := e.tree(t); !maps2Equal(before, after) {
				t.Errorf("uninstall left %v, want %v", keys(after), keys(before))
			}
			if cmds := e.hostCommands(t); !slices.Contains(cmds, "systemctl disable --now cocoond.service") {
				t.Errorf("uninstall ran %q on the host", cmds)
			}
		})
	}
}

func maps2Equal(a, b map[string]string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(keys(a), func(k string) bool { return a[k] != b[k] })
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkInstalled checks the files install wrote, and that each lies in a
// directory the DaemonSet mounts from the host.
func checkInstalled(t *testing.T, files map[string]string) {
	t.Helper()
	unit := files["/etc/systemd/system/cocoond.service"]
	if !strings.Contains(unit, "\nExecStart=/opt/cocoon/bin/cocoond --config /etc/cocoon/cocoond.toml\n") ||
		!strings.Contains(unit, "\nKillMode=process\n") || !strings.HasPrefix(unit, "-rw-r--r--\n") {
		t.Errorf("cocoond.service:\n%s", unit)
	}
	want, err := os.ReadFile(filepath.Join(contribDir, "kata-host", "cocoond.toml"))
	if err != nil {
		t.Fatal(err)
	}
	want = bytes.ReplaceAll(want, []byte("/usr/local/bin/"), []byte("/opt/cocoon/bin/"))
	if files["/etc/cocoon/cocoond.toml"] != "-rw-r--r--\n"+string(want) {
		t.Error("/etc/cocoon/cocoond.toml is not contrib/kata-host/cocoond.toml with its binaries in /opt/cocoon/bin")
	}
	var cfg struct {
		Snapshotter struct {
			KataMountType string `toml:"kata_mount_type"`
		} `toml:"snapshotter"`
	}
	if err := toml.Unmarshal(want, &cfg); err != nil {
		t.Fatal(err)
	}
	helper, _ := strings.CutPrefix(cfg.Snapshotter.KataMountType, "fuse.")
	if files[helper] != "-rwxr-xr-x\n#!/bin/sh\n" {
		t.Errorf("kata_mount_type %q names no installed mount helper", cfg.Snapshotter.KataMountType)
	}
	dropIn, _ := render(t, containerdConfigOptions{Address: "/run/cocoon/cocoon.sock", Version: "2", Name: "cocoon",
		Mode: modeKataHost, RuntimeHandler: "kata-qemu-coco-dev,kata-qemu-tdx"})
	if files["/etc/containerd/conf.d/cocoon.toml"] != "-rw-r--r--\n"+dropIn {
		t.Errorf("drop-in:\n%s", files["/etc/containerd/conf.d/cocoon.toml"])
	}
	var ctd srvconfig.Config
	conf := strings.SplitN(files["/etc/containerd/config.toml"], "\n", 2)[1]
	if err := toml.NewDecoder(strings.NewReader(conf)).DisallowUnknownFields().Decode(&ctd); err != nil {
		t.Fatalf("config.toml: %v\n%s", err, conf)
	}
	if !slices.Contains(ctd.Imports, "/etc/containerd/conf.d/cocoon.toml") && !slices.Contains(ctd.Imports, "/etc/containerd/conf.d/*.toml") {
		t.Errorf("config.toml imports %q", ctd.Imports)
	}
	checkMounted(t, keys(files))
}

// checkMounted: the DaemonSet mounts (under COCOON_HOST_ROOT) every host
// directory the script wrote in.
func checkMounted(t *testing.T, paths []string) {
	t.Helper()
	m := loadManifests(t)
	c := m.daemonSets[0].Spec.Template.Spec.Containers[0]
	root := daemonSetEnv(c, "COCOON_HOST_ROOT")
	for _, p := range paths {
		if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
			return !vm.ReadOnly && strings.HasPrefix(root+p, vm.MountPath+"/")
		}) {
			t.Errorf("the installer writes %s, which the DaemonSet does not mount writable", p)
		}
	}
}

// TestInstallerScriptRefuses: what the script cannot do fails before it
// writes anything, naming what to do instead.
func TestInstallerScriptRefuses(t *testing.T) {
	for name, c := range map[string]struct{ conf, env, want string }{
		"containerd 1.7":     {"version = 2\n", "COCOON_CONTAINERD_VERSION=1.7.27", "--containerd-version 1.7"},
		"multi-line imports": {"version = 3\nimports = [\n  \"/a.toml\",\n]\n", "", "add \"/etc/containerd/conf.d/cocoon.toml\" to it by hand"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newInstallEnv(t)
			writeFile(t, filepath.Join(e.root, "etc", "containerd", "config.toml"), c.conf)
			before := e.tree(t)
			cmd := exec.Command("bash", filepath.Join(kubeDir, "cocoon-install.sh"), "install")
			cmd.Env = append(e.env, c.env)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Errorf("err %v, output %s; want a failure saying %q", err, out, c.want)
			}
			if after := e.tree(t); !maps2Equal(before, after) {
				t.Errorf("a refused install wrote %v", keys(after))
			}
		})
	}
}
