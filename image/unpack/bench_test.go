package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type benchFile struct {
	name string
	data []byte
}

// benchLayer generates a layer of total bytes split into files of size
// bytes spread over 32 directories, and returns the tar and the files.
func benchLayer(b *testing.B, total, size int) ([]byte, []benchFile) {
	b.Helper()
	var files []benchFile
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := bytes.Repeat([]byte("cocoon benchmark data\n"), size/22+1)[:size]
	for i := 0; i < 32; i++ {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%02d/", i), Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < total/size; i++ {
		name := fmt.Sprintf("d%02d/f%06d", i%32, i)
		files = append(files, benchFile{name: name, data: content})
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: time.Unix(1700000000, 0)}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(content); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), files
}

// BenchmarkExtract compares Extract of a generated 64 MiB layer with a plain
// loop of os.MkdirAll+os.WriteFile writing the same files, measured in the
// same run, and reports the ratio as "x-baseline". The extra cost is tar
// parsing, per-component resolution and metadata (owner, mode, times).
func BenchmarkExtract(b *testing.B) {
	for _, size := range []int{1 << 20, 64 << 10, 4 << 10} {
		b.Run(fmt.Sprintf("files=%dKiB", size>>10), func(b *testing.B) {
			layer, files := benchLayer(b, 64<<20, size)
			base := b.TempDir()
			var baseline, measured time.Duration
			b.SetBytes(int64(len(layer)))
			b.ResetTimer()
			i := 0
			for b.Loop() {
				i++
				plain := filepath.Join(base, fmt.Sprintf("plain%d", i))
				root := filepath.Join(base, fmt.Sprintf("root%d", i))
				if err := os.Mkdir(root, 0o755); err != nil {
					b.Fatal(err)
				}
				runPlain := func() {
					start := time.Now()
					for _, f := range files {
						p := filepath.Join(plain, f.name)
						if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
							b.Fatal(err)
						}
						if err := os.WriteFile(p, f.data, 0o644); err != nil {
							b.Fatal(err)
						}
					}
					baseline += time.Since(start)
				}
				runExtract := func() {
					start := time.Now()
					if _, err := Extract(context.Background(), bytes.NewReader(layer), root, Options{}); err != nil {
						b.Fatal(err)
					}
					measured += time.Since(start)
				}
				// Alternate the order so that writeback of one run does
				// not always land on the same side.
				if i%2 == 0 {
					runPlain()
					runExtract()
				} else {
					runExtract()
					runPlain()
				}

				b.StopTimer()
				if err := os.RemoveAll(plain); err != nil {
					b.Fatal(err)
				}
				if err := os.RemoveAll(root); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(measured)/float64(baseline), "x-baseline")
		})
	}
}
