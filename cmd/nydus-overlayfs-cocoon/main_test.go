package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

// TestHelperMountsPlainOverlay: called as mount.fuse calls it (and as
// containerd calls a mount.fuse stand-in), the helper mounts overlay
// without the Kata option, and logs what it got when asked to.
func TestHelperMountsPlainOverlay(t *testing.T) {
	dir := t.TempDir()
	lower, upper, work := filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w")
	for _, d := range []string{lower, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "log")
	t.Setenv(logEnv, logFile)
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	kata := "io.katacontainers.volume=eyJ2b2x1bWVfdHlwZSI6ImltYWdlX2d1ZXN0X3B1bGwifQ=="
	for i, args := range [][]string{
		{"overlay", "", "-o", opts + "," + kata + ",dev,suid"},
		{"overlay", "", "-o", opts, "-o", kata, "-o", "dev,suid", "-t", "nydus-overlayfs-cocoon"},
	} {
		target := filepath.Join(dir, "m"+string(rune('0'+i)))
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		args[1] = target
		if err := run(args); err != nil {
			t.Fatalf("run %q: %v", args, err)
		}
		b, rerr := os.ReadFile(filepath.Join(target, "f"))
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Fatal(err)
		}
		if rerr != nil || string(b) != "lower" {
			t.Fatalf("overlay content %q %v", b, rerr)
		}
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		t.Fatalf("log has %d lines, want 2:\n%s", len(lines), b)
	}
	var entry struct{ Options []string }
	if err := json.Unmarshal([]byte(lines[1]), &entry); err != nil || !slices.Contains(entry.Options, kata) {
		t.Fatalf("log line %s: %v", lines[1], err)
	}
	if err := run([]string{"overlay", filepath.Join(dir, "m0"), "-o", kata}); err == nil {
		t.Fatal("options without lowerdir mounted")
	}
}
