package daemon

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/snapshotter"
)

// contrib/kata-host/cocoond.toml loads as cocoond in kata-host mode without
// unknown keys, as shipped (binaries in /usr/local/bin) and as
// contrib/kubernetes/cocoon-install.sh rewrites it (in /opt/cocoon/bin).
func TestShippedKataHostConfig(t *testing.T) {
	src := filepath.Join("..", "contrib", "kata-host", "cocoond.toml")
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	rewritten := filepath.Join(t.TempDir(), "cocoond.toml")
	if err := os.WriteFile(rewritten, []byte(strings.ReplaceAll(string(raw), "/usr/local/bin/", "/opt/cocoon/bin/")), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{src, rewritten} {
		cfg, warnings, err := Load(p)
		if err != nil || len(warnings) > 0 {
			t.Fatalf("%s: %v %v", p, err, warnings)
		}
		if cfg.Mode != ModeKataHost || !cfg.Serves(ServeSnapshotter) || cfg.Address != "/run/cocoon/cocoon.sock" ||
			path.Base(cfg.Snapshotter.KataMountType) != snapshotter.KataHelperName {
			t.Errorf("%s: mode %q, address %q, kata_mount_type %q", p, cfg.Mode, cfg.Address, cfg.Snapshotter.KataMountType)
		}
	}
}
