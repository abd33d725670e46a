package main

import (
	"testing"

	"github.com/cocoon-cc/cocoon/daemon"
)

// TestFlagsOverrideConfig: a flag given replaces the file's value, a flag
// not given keeps it, repeatable flags append, and a size flag is stored in
// the syntax the config reads.
func TestFlagsOverrideConfig(t *testing.T) {
	f, err := parseFlags([]string{
		"--root", "/r", "--tee", "sample", "--insecure-registry", "a:5000", "--insecure-registry", "b:5000",
		"--secrets-source", "x=/src", "--storage-volume", "/dev/vdb", "--storage-volume-size", "1536M",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Default()
	cfg.Address = "/from/file.sock"
	cfg.Registry.Insecure = []string{"file:5000"}
	f.apply(&cfg)
	if cfg.Root != "/r" || cfg.Attestation.TEE != "sample" || cfg.Address != "/from/file.sock" || cfg.Storage.Volume != "/dev/vdb" {
		t.Errorf("config %+v", cfg)
	}
	if len(cfg.Registry.Insecure) != 3 || cfg.Registry.Insecure[2] != "b:5000" || len(cfg.Secrets.Sources) != 1 {
		t.Errorf("lists %q %q", cfg.Registry.Insecure, cfg.Secrets.Sources)
	}
	if cfg.Storage.Size != "1.5GiB" {
		t.Errorf("storage size %q", cfg.Storage.Size)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{"--storage-volume-size", "lots"}, {"extra"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestModeKataHostFlag: --mode kata-host over a config file's guest mode
// gives a valid kata-host configuration serving only the snapshots API.
func TestModeKataHostFlag(t *testing.T) {
	f, err := parseFlags([]string{"--root", "/r", "--mode", "kata-host"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Default()
	cfg.Mode = daemon.ModeGuest
	f.apply(&cfg)
	if cfg.Mode != daemon.ModeKataHost {
		t.Fatalf("mode %q", cfg.Mode)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Serves(daemon.ServeSnapshotter) || cfg.Serves(daemon.ServeREST) {
		t.Fatal("kata-host serves more than the snapshots API")
	}
}
