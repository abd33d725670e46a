package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/BurntSushi/toml"
)

func render(t *testing.T, o containerdConfigOptions) (string, map[string]any) {
	t.Helper()
	var b bytes.Buffer
	if err := writeContainerdConfig(&b, o); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if _, err := toml.Decode(b.String(), &doc); err != nil {
		t.Fatalf("fragment is not valid TOML: %v\n%s", err, b.String())
	}
	return b.String(), doc
}

func dig(doc map[string]any, path ...string) any {
	var cur any = doc
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func TestContainerdConfig2(t *testing.T) {
	_, doc := render(t, containerdConfigOptions{Address: "/run/x.sock", Version: "2", Name: "cocoon", Platform: "linux/amd64"})
	for _, c := range []struct {
		path []string
		want any
	}{
		{[]string{"proxy_plugins", "cocoon", "type"}, "snapshot"},
		{[]string{"proxy_plugins", "cocoon", "address"}, "/run/x.sock"},
		{[]string{"proxy_plugins", "cocoon", "exports", "enable_remote_snapshot_annotations"}, "true"},
		{[]string{"plugins", "io.containerd.cri.v1.images", "snapshotter"}, "cocoon"},
	} {
		if got := dig(doc, c.path...); got != c.want {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	uc, _ := dig(doc, "plugins", "io.containerd.transfer.v1.local", "unpack_config").([]map[string]any)
	if len(uc) != 1 || uc[0]["platform"] != "linux/amd64" || uc[0]["snapshotter"] != "cocoon" {
		t.Errorf("unpack_config = %#v", dig(doc, "plugins", "io.containerd.transfer.v1.local", "unpack_config"))
	}
}

func TestContainerdConfigRuntimeHandler(t *testing.T) {
	_, doc := render(t, containerdConfigOptions{Address: "/run/x.sock", Version: "2", Name: "cocoon", Platform: "linux/amd64", RuntimeHandler: "kata-qemu-tdx"})
	if got := dig(doc, "plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "kata-qemu-tdx", "snapshotter"); got != "cocoon" {
		t.Errorf("runtime snapshotter = %v", got)
	}
	if got := dig(doc, "plugins", "io.containerd.cri.v1.images", "snapshotter"); got != nil {
		t.Errorf("global snapshotter set to %v with a runtime handler", got)
	}
}

func TestContainerdConfig17(t *testing.T) {
	_, doc := render(t, containerdConfigOptions{Address: "/run/x.sock", Version: "1.7", Name: "cocoon"})
	cri := []string{"plugins", "io.containerd.grpc.v1.cri", "containerd"}
	if got := dig(doc, append(cri, "disable_snapshot_annotations")...); got != false {
		t.Errorf("disable_snapshot_annotations = %v", got)
	}
	if got := dig(doc, append(cri, "snapshotter")...); got != "cocoon" {
		t.Errorf("snapshotter = %v", got)
	}
	if got := dig(doc, "proxy_plugins", "cocoon", "exports"); got != nil {
		t.Errorf("1.7 fragment has exports: %v", got)
	}
}

func TestContainerdConfigRefusesBadInput(t *testing.T) {
	for _, o := range []containerdConfigOptions{
		{Address: "relative.sock", Version: "2", Name: "cocoon"},
		{Address: "/x.sock", Version: "3", Name: "cocoon"},
		{Address: "/x.sock", Version: "2", Name: "co coon"},
		{Address: "/x.sock", Version: "2", Name: "cocoon", RuntimeHandler: "a]b"},
		{Address: "/x.sock", Version: "2", Name: "cocoon", Mode: "host"},
		{Address: "/x.sock", Version: "2", Name: "cocoon", Mode: modeKataHost, RuntimeHandler: "kata-qemu-tdx,,kata-qemu-snp"},
		{Address: "/x.sock", Version: "2", Name: "cocoon", Mode: modeKataHost, RuntimeHandler: "kata qemu"},
		{Address: "/x.sock", Version: "1.6", Name: "cocoon", Mode: modeKataHost},
	} {
		if err := writeContainerdConfig(&bytes.Buffer{}, o); !errors.Is(err, errUsage) {
			t.Errorf("%+v: error = %v", o, err)
		}
	}
}

// The files in contrib/ are what the command prints; keep them in step.
func TestContribMatchesCommand(t *testing.T) {
	for file, o := range map[string]containerdConfigOptions{
		"containerd-2.x.toml":      {Version: "2"},
		"containerd-1.7.toml":      {Version: "1.7"},
		"containerd-2.x-kata.toml": {Version: "2", RuntimeHandler: "kata-qemu-coco-dev"},
		// cocoonctl containerd-config --mode kata-host [--containerd-version 1.7]
		"kata-host/containerd-2.x.toml": {Version: "2", Mode: modeKataHost},
		"kata-host/containerd-1.7.toml": {Version: "1.7", Mode: modeKataHost},
	} {
		o.Address, o.Name, o.Platform = "/run/cocoon/cocoon.sock", "cocoon", "linux/amd64"
		got, _ := render(t, o)
		want, err := os.ReadFile(filepath.Join("..", "..", "contrib", file))
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("contrib/%s is stale; regenerate it with cocoonctl containerd-config", file)
		}
	}
}
