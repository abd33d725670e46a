package harness

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestSweepStaleWorkDirs(t *testing.T) {
	mk := func(owner string) string {
		t.Helper()
		dir, err := os.MkdirTemp("", workDirPrefix+"sweeptest-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if owner != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	self := processIdentity(os.Getpid())
	if self == "" {
		t.Fatal("cannot read this process's identity from /proc")
	}
	dead := mk("2147483646 12345") // no such PID
	reused := mk(self + "0")       // our PID, another start time
	live := mk(self)
	unowned := mk("")

	sweepStaleWorkDirs(t)

	for _, c := range []struct {
		dir  string
		gone bool
	}{{dead, true}, {reused, true}, {live, false}, {unowned, false}} {
		_, err := os.Stat(c.dir)
		if gone := errors.Is(err, os.ErrNotExist); gone != c.gone {
			t.Errorf("%s: removed = %v, want %v", c.dir, gone, c.gone)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP cocoon_pull_layers_total Layers pulled.
# TYPE cocoon_pull_layers_total counter
cocoon_pull_layers_total 3
cocoon_pull_failures_total{reason="digest mismatch"} 1
cocoon_pull_failures_total{reason="unsafe"} 2
cocoon_pull_bytes_total 1.5e+06
`
	m, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"cocoon_pull_layers_total":   3,
		"cocoon_pull_failures_total": 3,
		"cocoon_pull_bytes_total":    1.5e6,
		"cocoon_pull_missing":        0,
	} {
		if got := MetricSum(m, name); got != want {
			t.Errorf("MetricSum(%s) = %v, want %v", name, got, want)
		}
	}
	if _, err := ParseMetrics(strings.NewReader("cocoon_x notanumber\n")); err == nil {
		t.Error("ParseMetrics accepted a non-numeric value")
	}
}

func TestChainIDs(t *testing.T) {
	// Two-layer chain: the second ID is sha256("<id0> <diff1>").
	got := ChainIDs([]string{"sha256:a", "sha256:b"})
	if len(got) != 2 || got[0] != "sha256:a" || got[1] != digestOf([]byte("sha256:a sha256:b")) {
		t.Errorf("ChainIDs = %v", got)
	}
}

// TestMountsUnderUnescapes checks that a mount point mountinfo escapes
// (\040 for a space, \134 for a backslash) is listed by its real path.
func TestMountsUnderUnescapes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip(ErrNotRoot)
	}
	dir := t.TempDir()
	mp := filepath.Join(dir, `a b\c`)
	if err := os.Mkdir(mp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mp, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mp, syscall.MNT_DETACH) })
	got, err := MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != mp {
		t.Errorf("MountsUnder(%s) = %q, want [%q]", dir, got, mp)
	}
}

func TestProcStatusBytes(t *testing.T) {
	// VmRSS is reported in kB (1024 bytes).
	rss, err := ProcStatusBytes(os.Getpid(), "VmRSS")
	if err != nil || rss <= 0 || rss%1024 != 0 {
		t.Errorf("VmRSS = %d, %v; want a positive multiple of 1024", rss, err)
	}
	if _, err := ProcStatusBytes(os.Getpid(), "NoSuchField"); err == nil {
		t.Error("a missing field was read")
	}
}

func TestCountBlobGets(t *testing.T) {
	const d = "sha256:28de7b9da03b32de044954ff04a9699dce94a8b884a6d90a8c74aabf203ab48a"
	log := strings.Join([]string{
		"2026/12/06 22:27:46 GET /v2/",
		"2026/12/06 22:27:46 HEAD /v2/coco/app/blobs/" + d,
		"2026/12/06 22:27:46 GET /v2/coco/app/blobs/" + d,
		"2026/12/06 22:27:46 GET /v2/coco/app/blobs/" + d + " 404 BLOB_UNKNOWN Unknown blob",
		"2026/12/06 22:27:46 GET /v2/plain/app/blobs/" + d,
		"2026/12/06 22:27:47 GET /v2/coco/app/blobs/" + d,
		"2026/12/06 22:27:47 GET /v2/coco/app/blobs/" + d + "x",
	}, "\n")
	if n := countBlobGets(log, "coco/app", d); n != 2 {
		t.Errorf("countBlobGets = %d, want 2", n)
	}
	if n := countBlobGets(log, "plain/app", d); n != 1 {
		t.Errorf("countBlobGets(plain/app) = %d, want 1", n)
	}
}
