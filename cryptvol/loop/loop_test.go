package loop

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAttachDetach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices)")
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"4096 direct", Options{BlockSize: 4096, DirectIO: true}},
		{"512 buffered", Options{BlockSize: 512}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			file := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := Attach(ctx, file, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			// The test detaches on its own; this only catches a failure
			// before that, so a second detach's error says nothing.
			t.Cleanup(func() { _ = d.Detach(ctx, 5*time.Second) })
			if bf, ok := BackingFile(d.Path()); !ok || bf != file {
				t.Fatalf("backing %q %v", bf, ok)
			}
			f, err := os.OpenFile(d.Path(), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte("loop"), 1024)
			if _, err := f.WriteAt(data, 8192); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := d.Detach(ctx, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if _, ok := BackingFile(d.Path()); ok {
				t.Fatal("still attached after Detach")
			}
			raw, _ := os.ReadFile(file)
			if !bytes.Equal(raw[8192:8192+len(data)], data) {
				t.Fatal("write through the loop device did not reach the file")
			}
		})
	}
}
