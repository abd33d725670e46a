package katarules

import (
	"encoding/base64"
	"strings"
	"testing"
)

func volumeMount(typ, js string) Mount {
	return Mount{Type: typ, Source: "overlay", Options: []string{"lowerdir=/a", prefix + base64.StdEncoding.EncodeToString([]byte(js))}}
}

// TestRulesRefuse: each validator refuses what its upstream refuses.
func TestRulesRefuse(t *testing.T) {
	const typ = "fuse.nydus-overlayfs-cocoon"
	good := `{"volume_type":"image_guest_pull","source":"r/i:1","image_pull":{"metadata":{"k":"v"}}}`
	if err := All([]Mount{volumeMount(typ, good)}); err != nil {
		t.Fatalf("valid volume refused: %v", err)
	}
	cases := []struct {
		name  string
		check func() error
		want  string
	}{
		{"nydus: no image_pull", func() error { return Nydus(volumeMount(typ, `{"volume_type":"image_guest_pull","source":"x"}`)) }, "metadata is nil"},
		{"nydus: null metadata", func() error {
			return Nydus(volumeMount(typ, `{"volume_type":"image_guest_pull","source":"x","image_pull":{"metadata":null}}`))
		}, "metadata is nil"},
		{"go: type", func() error { return GoRuntime(volumeMount("fuse.cocoon-overlay", good)) }, "IsNydusRootFSType"},
		{"go: overlay type", func() error { return GoRuntime(volumeMount("overlay", good)) }, "IsNydusRootFSType"},
		{"go: no image_pull", func() error { return GoRuntime(volumeMount(typ, `{"volume_type":"image_guest_pull","source":"x"}`)) }, "no image_pull"},
		{"go: no volume type", func() error { return GoRuntime(volumeMount(typ, `{"source":"x","image_pull":{"metadata":{}}}`)) }, "empty volume_type"},
		{"rs: no source", func() error {
			return RuntimeRS([]Mount{volumeMount(typ, `{"volume_type":"image_guest_pull","image_pull":{"metadata":{}}}`)})
		}, "missing image reference"},
		{"rs: two mounts", func() error { return RuntimeRS([]Mount{volumeMount(typ, good), volumeMount(typ, good)}) }, "exactly one"},
		{"rs: metadata not strings", func() error {
			return RuntimeRS([]Mount{volumeMount(typ, `{"volume_type":"image_guest_pull","source":"x","image_pull":{"metadata":{"k":1}}}`)})
		}, "string map"},
		{"no option", func() error { return Nydus(Mount{Type: typ, Options: []string{"lowerdir=/a"}}) }, "no io.katacontainers.volume"},
		{"bad base64", func() error { return Nydus(Mount{Type: typ, Options: []string{prefix + "!!"}}) }, "base64"},
	}
	for _, c := range cases {
		if err := c.check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
