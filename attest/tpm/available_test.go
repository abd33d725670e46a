package tpm

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAvailable(t *testing.T) {
	saved := devicePaths
	t.Cleanup(func() { devicePaths = saved })
	dir := t.TempDir()
	present := filepath.Join(dir, "device")
	if err := os.WriteFile(present, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		paths []string
		want  bool
	}{
		{[]string{missing}, false},
		{[]string{missing, present}, true},
		{[]string{present, missing}, true},
	} {
		devicePaths = tc.paths
		if got := Available(); got != tc.want {
			t.Errorf("Available() with %v = %v, want %v", tc.paths, got, tc.want)
		}
	}
}
