package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSocket = "/run/cocoon/cocoon.sock"

// fragment is what `cocoonctl containerd-config` prints for version and
// handler.
func fragment(t *testing.T, version, handler string) string {
	t.Helper()
	var b strings.Builder
	o := containerdConfigOptions{Address: testSocket, Version: version, Name: "cocoon", Platform: "linux/amd64", RuntimeHandler: handler}
	if err := writeContainerdConfig(&b, o); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// writeConfig writes the main file and, when dropIn is set, a drop-in
// under conf.d/ that the main file imports by glob, as kata-deploy and
// the cocoon DaemonSet install theirs.
func writeConfig(t *testing.T, main, dropIn string) string {
	t.Helper()
	dir := t.TempDir()
	if dropIn != "" {
		if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "conf.d", "cocoon.toml"), []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
		// Top-level keys come before the first table.
		main = "imports = [\"" + filepath.Join(dir, "conf.d", "*.toml") + "\"]\n" + main
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// containerdCase is a configuration and what the three checks make of it:
// each want is "<status>" or "<status> <substring of the line>".
type containerdCase struct {
	name, main, dropIn, handler string
	proxy, labels, snapshotter  string
}

func runContainerdCase(t *testing.T, tc containerdCase) {
	t.Helper()
	v, err := loadContainerdConfig(writeConfig(t, tc.main, tc.dropIn))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		got  result
		want string
	}{
		{checkProxyPlugin(v, "cocoon", testSocket), tc.proxy},
		{checkCRILabels(v, "cocoon"), tc.labels},
		{checkCRISnapshotter(v, "cocoon", tc.handler), tc.snapshotter},
	} {
		status, text, _ := strings.Cut(c.want, " ")
		if c.got.Status != status || !strings.Contains(c.got.String(), text) {
			t.Errorf("%s: got %q, want %s containing %q", c.got.Check, c.got, status, text)
		}
	}
}

// TestContainerdFragmentsPass: what containerd-config prints, imported by
// a stock main file, passes all three checks, for both containerd
// generations, all pods or one runtime handler.
func TestContainerdFragmentsPass(t *testing.T) {
	const v3, v2 = "version = 3\n", "version = 2\n"
	const kata17 = `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-tdx]
  runtime_type = "io.containerd.kata-qemu-tdx.v2"
`
	for _, tc := range []containerdCase{
		{name: "2.x all pods", main: v3, dropIn: fragment(t, "2", ""), proxy: "ok version 3, imports ", labels: "ok unpack_config linux/amd64/cocoon", snapshotter: "ok every pod"},
		// containerd v2.4.2 writes version 4 (version.ConfigVersion).
		{name: "2.4 all pods", main: "version = 4\n", dropIn: fragment(t, "2", ""), proxy: "ok version 4", labels: "ok transfer-service", snapshotter: "ok every pod"},
		{name: "2.x handler", main: v3, dropIn: fragment(t, "2", "kata-qemu-tdx"), handler: "kata-qemu-tdx", proxy: "ok", labels: "ok transfer-service", snapshotter: "ok runtime handler kata-qemu-tdx uses cocoon for its images and containers; image pulls use it only when the kubelet passes the handler (feature gate RuntimeClassInImageCriApi) or the pod carries the annotation io.containerd.cri.runtime-handler: kata-qemu-tdx, else they use overlayfs"},
		{name: "2.x handler, none named", main: v3, dropIn: fragment(t, "2", "kata-qemu-tdx"), proxy: "ok", labels: "ok", snapshotter: "ok runtime handlers kata-qemu-tdx use cocoon (the default snapshotter is overlayfs)"},
		{name: "1.7 all pods", main: v2, dropIn: fragment(t, "1.7", ""), proxy: "ok version 2", labels: "ok disable_snapshot_annotations = false", snapshotter: "ok every pod"},
		// The runtime-level snapshotter of a version 2 file reaches the
		// CRI runtime plugin through the migration.
		{name: "1.7 handler", main: v2 + kata17, dropIn: fragment(t, "1.7", "kata-qemu-tdx"), handler: "kata-qemu-tdx", proxy: "ok", labels: "ok", snapshotter: "ok runtime handler kata-qemu-tdx"},
	} {
		t.Run(tc.name, func(t *testing.T) { runContainerdCase(t, tc) })
	}
}

// TestContainerdMisconfigurations: the mistakes users report (SNAPSHOTTERS.md
// section 5: annotations off, the v3 move of disable_snapshot_annotations,
// a handler without the snapshotter) each fail with the setting to change.
func TestContainerdMisconfigurations(t *testing.T) {
	const proxyV3 = "version = 3\n[proxy_plugins.cocoon]\n  type = \"snapshot\"\n  address = \"" + testSocket + "\"\n"
	const images = "[plugins.\"io.containerd.cri.v1.images\"]\n"
	const runtimeTDX = "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-qemu-tdx]\n"
	for _, tc := range []containerdCase{
		{name: "no proxy plugin", main: "version = 3\n" + images + "  snapshotter = \"cocoon\"\n",
			proxy: "fail has no [proxy_plugins.cocoon]", labels: "fail does not export", snapshotter: "ok"},
		{name: "wrong type and address", main: "version = 3\n[proxy_plugins.cocoon]\n  type = \"content\"\n", proxy: "fail type = \"content\"", labels: "fail", snapshotter: "fail default CRI snapshotter is overlayfs"},
		{name: "wrong address", main: "version = 3\n[proxy_plugins.cocoon]\n  type = \"snapshot\"\n  address = \"/run/nydus.sock\"\n",
			proxy: "fail cocoond listens on \"" + testSocket + "\"", labels: "fail enable_remote_snapshot_annotations = \"true\" in [proxy_plugins.cocoon.exports]", snapshotter: "fail"},
		{name: "1.7 annotations left at the default", main: "version = 2\n[proxy_plugins.cocoon]\n  type = \"snapshot\"\n  address = \"" + testSocket + "\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"cocoon\"\n",
			proxy: "ok", labels: "fail [plugins.\"io.containerd.grpc.v1.cri\".containerd]", snapshotter: "ok every pod"},
		// kata PR #12577: the v2 location is ignored in a version 3 file.
		{name: "2.x annotations at the 1.7 location", main: proxyV3 + "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  disable_snapshot_annotations = false\n",
			proxy: "ok", labels: "fail [plugins.\"io.containerd.cri.v1.images\"]", snapshotter: "fail"},
		{name: "2.x local pull", main: proxyV3 + images + "  disable_snapshot_annotations = false\n  snapshotter = \"cocoon\"\n", proxy: "ok", labels: "ok", snapshotter: "ok"},
		{name: "2.x use_local_image_pull", main: proxyV3 + "  [proxy_plugins.cocoon.exports]\n    enable_remote_snapshot_annotations = \"true\"\n" + images + "  use_local_image_pull = true\n",
			proxy: "ok", labels: "fail use_local_image_pull = true", snapshotter: "fail"},
		{name: "2.x no unpack_config", main: proxyV3 + "  [proxy_plugins.cocoon.exports]\n    enable_remote_snapshot_annotations = \"true\"\n",
			proxy: "ok", labels: "fail skips unpacking into cocoon", snapshotter: "fail"},
		{name: "handler missing", main: proxyV3, handler: "kata-qemu-snp", proxy: "ok", labels: "fail", snapshotter: "fail no runtime handler \"kata-qemu-snp\""},
		{name: "handler without snapshotter", main: proxyV3 + runtimeTDX + "  runtime_type = \"io.containerd.kata-qemu-tdx.v2\"\n", handler: "kata-qemu-tdx",
			proxy: "ok", labels: "fail", snapshotter: "fail containers use snapshotter overlayfs, its image pulls overlayfs"},
		{name: "handler pulls elsewhere", main: proxyV3 + runtimeTDX + "  snapshotter = \"cocoon\"\n" + images + "  [plugins.\"io.containerd.cri.v1.images\".runtime_platforms.kata-qemu-tdx]\n    snapshotter = \"nydus\"\n",
			handler: "kata-qemu-tdx", proxy: "ok", labels: "fail", snapshotter: "fail containers use snapshotter cocoon, its image pulls nydus"},
	} {
		t.Run(tc.name, func(t *testing.T) { runContainerdCase(t, tc) })
	}
}

func TestContainerdConfigUnreadable(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("version = 3\n[proxy_plugins.cocoon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bad, filepath.Join(dir, "absent.toml")} {
		o := &doctorOptions{containerdConfig: path, snapshotter: "cocoon", address: testSocket}
		var got []result
		for _, c := range containerdChecks(o) {
			got = append(got, c(t.Context()))
		}
		if got[0].Status != statusFail || !strings.Contains(got[0].Finding, path) || got[1].Status != statusSkip || got[2].Status != statusSkip {
			t.Errorf("%s: %v", path, got)
		}
	}
}
