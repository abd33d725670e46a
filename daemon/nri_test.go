package daemon

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/nri/pkg/api"
	"github.com/opencontainers/go-digest"
)

type fakeAdmitter struct{ allowed map[string]bool }

func (f fakeAdmitter) Admit(_ context.Context, ref string, dgst digest.Digest) error {
	if f.allowed[ref+"@"+dgst.String()] {
		return nil
	}
	return fmt.Errorf("Image policy rejected: Denied by policy: %w", errdefs.ErrPermissionDenied)
}

// TestNRICreateContainer: the plugin refuses a container whose image the
// admission check refuses or that comes without an image identity, and
// makes no adjustment to one it admits.
func TestNRICreateContainer(t *testing.T) {
	ok := digest.FromString("ok")
	p := &nriPlugin{admit: fakeAdmitter{allowed: map[string]bool{"r/app:v1@" + ok.String(): true}}, ctx: context.Background()}
	pod := &api.PodSandbox{Name: "p", Namespace: "default"}
	for _, tc := range []struct {
		name string
		img  *api.Image
		want string // "" admits
	}{
		{"accepted", &api.Image{Name: "r/app:v1", Digest: ok.String()}, ""},
		{"refused", &api.Image{Name: "r/other:v1", Digest: ok.String()}, "cocoon: container image r/other:v1 refused: Image policy rejected"},
		{"no image", nil, "did not name the container's image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			adj, upd, err := p.CreateContainer(context.Background(), pod, &api.Container{Name: "c", Image: tc.img})
			if adj != nil || upd != nil {
				t.Errorf("adjustments %v %v, want none", adj, upd)
			}
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNRIConfig(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, idx := range []string{"", "1", "1a", "100"} {
		c.NRI.PluginIndex = idx
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "nri.plugin_index") {
			t.Errorf("plugin_index %q: %v", idx, err)
		}
	}
}
