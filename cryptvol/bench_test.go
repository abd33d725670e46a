package cryptvol

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/loop"
)

// benchBytes is the file size each pass writes and reads
// (COCOON_BENCH_MB overrides the default 256 MiB).
func benchBytes() int64 {
	if v, err := strconv.Atoi(os.Getenv("COCOON_BENCH_MB")); err == nil && v > 0 {
		return int64(v) << 20
	}
	return 256 << 20
}

func alignedBlock(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[off : off+n]
}

// directPass writes size bytes with O_DIRECT in 1 MiB requests, fsyncs,
// then reads them back with O_DIRECT; it returns both throughputs in MB/s.
func directPass(b *testing.B, dir string, size int64) (writeMBs, readMBs float64) {
	path := filepath.Join(dir, "bench")
	block := alignedBlock(1 << 20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for off := int64(0); off < size; off += int64(len(block)) {
		if _, err := f.WriteAt(block, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	writeMBs = float64(size) / 1e6 / time.Since(start).Seconds()
	start = time.Now()
	for off := int64(0); off < size; off += int64(len(block)) {
		if _, err := f.ReadAt(block, off); err != nil {
			b.Fatal(err)
		}
	}
	readMBs = float64(size) / 1e6 / time.Since(start).Seconds()
	f.Close()
	os.Remove(path)
	return writeMBs, readMBs
}

// plainExt4 mounts ext4 on a loop device (direct I/O, 4096-byte blocks)
// over an unencrypted file: the baseline.
func plainExt4(b *testing.B, dir string, size int64) string {
	ctx := context.Background()
	img := filepath.Join(dir, "plain.img")
	sparseFile(b, img, size)
	d, err := loop.Attach(ctx, img, loop.Options{BlockSize: 4096, DirectIO: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Detach(ctx, 10*time.Second); err != nil {
			b.Error(err)
		}
	})
	if err := mkfsExt4(ctx, d.Path()); err != nil {
		b.Fatal(err)
	}
	mnt := filepath.Join(dir, "plain")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := unix.Mount(d.Path(), mnt, "ext4", 0, ""); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := unmount(ctx, mnt); err != nil {
			b.Error(err)
		}
	})
	return mnt
}

// BenchmarkSequentialDirectIO compares O_DIRECT sequential write and read
// throughput of ext4 on the userspace engine with ext4 on a plain loop
// device over an unencrypted file, both measured in the same run on the
// same file system. Ratios (engine / baseline) are the result to read.
func BenchmarkSequentialDirectIO(b *testing.B) {
	requireRoot(b)
	ctx := testCtx(b)
	dir := b.TempDir()
	size := benchBytes()
	volSize := size + size/4 + 64<<20 // room for ext4 metadata and journal
	base := plainExt4(b, dir, volSize)
	var v *Volume
	volumeCleanup(b, &v)
	v, err := CreateEphemeral(ctx, EphemeralOptions{
		Backing: filepath.Join(dir, "crypt.img"), Size: volSize,
		MountDir: filepath.Join(dir, "crypt"), Engine: EngineUserspace, RuntimeDir: filepath.Join(dir, "run"),
	})
	if err != nil {
		b.Fatal(err)
	}
	var bw, br, cw, cr float64
	b.SetBytes(2 * size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, r := directPass(b, base, size)
		bw, br = bw+w, br+r
		w, r = directPass(b, v.MountDir(), size)
		cw, cr = cw+w, cr+r
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(bw/n, "plain-write-MB/s")
	b.ReportMetric(br/n, "plain-read-MB/s")
	b.ReportMetric(cw/n, "userspace-write-MB/s")
	b.ReportMetric(cr/n, "userspace-read-MB/s")
	b.ReportMetric(cw/bw, "write-ratio")
	b.ReportMetric(cr/br, "read-ratio")
}

// BenchmarkSectorCipher measures the AES-XTS work alone (1 MiB requests),
// against a plain memory copy of the same size as the baseline.
func BenchmarkSectorCipher(b *testing.B) {
	key := make([]byte, 64)
	buf := make([]byte, 1<<20)
	dst := make([]byte, 1<<20)
	sc, err := newSectorCipherForBench(key)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < 64; i++ {
		copy(dst, buf)
	}
	copyRate := 64 * float64(len(buf)) / 1e6 / time.Since(start).Seconds()
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		sc.Encrypt(buf, int64(i)*int64(len(buf)))
	}
	rate := float64(b.N) * float64(len(buf)) / 1e6 / time.Since(start).Seconds()
	b.ReportMetric(rate, "xts-MB/s")
	b.ReportMetric(rate/copyRate, "ratio-to-memcpy")
}
