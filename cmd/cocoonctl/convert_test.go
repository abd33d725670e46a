package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/image/convert"
)

func TestConvertCommand(t *testing.T) {
	_, kekFile := encTestKEK(t)
	src := "oci:" + encTestLayout(t) + ":v1"
	ctx := context.Background()
	const kid = "kbs:///default/image-kek/1"

	t.Run("plain with prioritized files", func(t *testing.T) {
		list := filepath.Join(t.TempDir(), "prio")
		if err := os.WriteFile(list, []byte("# read first\n/etc/missing\n\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":esgz"
		var out, warn bytes.Buffer
		if err := runConvert(ctx, []string{"--estargz", "--chunk-size", "4096", "--compression-level", "1", "--prioritized-files", list, "--prioritize", "/also/missing", src, dst}, &out, &warn); err != nil {
			t.Fatal(err)
		}
		img := mustOpen(t, dst)
		if d, _ := img.Digest(); out.String() != dst+"@"+d.String()+"\n" {
			t.Fatalf("printed %q, wrote %s", out.String(), d)
		}
		if !strings.Contains(warn.String(), "/etc/missing is in no converted layer") || !strings.Contains(warn.String(), "/also/missing") {
			t.Fatalf("warnings %q", warn.String())
		}
		m, _ := img.Manifest()
		for i, l := range m.Layers {
			if l.Annotations[convert.AnnotationTOCDigest] == "" {
				t.Fatalf("layer %d has no TOC digest annotation", i)
			}
		}
	})
	t.Run("encrypted", func(t *testing.T) {
		dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":enc"
		if err := runConvert(ctx, []string{"--estargz", "--encrypt", "--kid", kid, "--key-file", kekFile, src, dst}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		img := mustOpen(t, dst)
		checkEncryptedFor(t, img, kid)
		m, _ := img.Manifest()
		for i, l := range m.Layers {
			if l.Annotations[convert.AnnotationTOCDigest] == "" || l.Annotations[convert.AnnotationUncompressedSize] == "" {
				t.Fatalf("encrypted layer %d lost its eStargz annotations: %v", i, l.Annotations)
			}
		}
	})
}

func TestConvertCommandRejects(t *testing.T) {
	_, kekFile := encTestKEK(t)
	src := "oci:" + encTestLayout(t) + ":v1"
	dstDir := filepath.Join(t.TempDir(), "out")
	dst := "oci:" + dstDir
	tests := []struct {
		name  string
		args  []string
		want  string
		usage bool
	}{
		{"no format", []string{src, dst}, "--estargz", true},
		{"one ref", []string{"--estargz", src}, "SRC_REF", true},
		{"encrypt without kid", []string{"--estargz", "--encrypt", "--key-file", kekFile, src, dst}, "--kid", true},
		{"kid without encrypt", []string{"--estargz", "--kid", "kbs:///a/b/c", "--key-file", kekFile, src, dst}, "need --encrypt", true},
		{"bad level", []string{"--estargz", "--compression-level", "12", src, dst}, "compression level 12", false},
		{"missing list", []string{"--estargz", "--prioritized-files", filepath.Join(t.TempDir(), "none"), src, dst}, "prioritized files", false},
		{"missing tag", []string{"--estargz", src + "x", dst}, "no image tagged", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runConvert(context.Background(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) || errors.Is(err, errUsage) != tt.usage {
				t.Fatalf("err = %v, want %q (usage error: %v)", err, tt.want, tt.usage)
			}
			if _, err := os.Stat(dstDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("destination written: %v", err)
			}
		})
	}
}
