package cryptvol

import (
	"context"
	"os"
	"path/filepath"
	"slices"
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

// benchSlice is how much one side of an interleaved pass moves before the
// other side takes its turn.
const benchSlice = 16 << 20

// interleavedPass writes size bytes to a new file in each of dirs with
// O_DIRECT in 1 MiB requests, taking turns every benchSlice bytes (so load
// from elsewhere on the machine falls on both sides alike), fsyncs each
// file, then reads both back the same way. It returns each side's write
// and read throughput in MB/s (the fsync counts toward the write).
func interleavedPass(b *testing.B, dirs [2]string, size int64) (writeMBs, readMBs [2]float64) {
	block := alignedBlock(1 << 20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	var files [2]*os.File
	for i, dir := range dirs {
		path := filepath.Join(dir, "bench")
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		files[i] = f
		defer os.Remove(path)
		defer f.Close()
	}
	var spent [2]time.Duration
	timed := func(side int, fn func(f *os.File) error) {
		start := time.Now()
		if err := fn(files[side]); err != nil {
			b.Fatal(err)
		}
		spent[side] += time.Since(start)
	}
	phase := func(io func(f *os.File, p []byte, off int64) (int, error)) {
		for slice := int64(0); slice < size; slice += benchSlice {
			for k := range 2 {
				// Alternate which side goes first, so neither always
				// follows the other's writeback.
				side := k ^ int(slice/benchSlice&1)
				timed(side, func(f *os.File) error {
					for off := slice; off < min(slice+benchSlice, size); off += int64(len(block)) {
						if _, err := io(f, block, off); err != nil {
							return err
						}
					}
					return nil
				})
			}
		}
	}
	phase((*os.File).WriteAt)
	for side := range 2 {
		timed(side, (*os.File).Sync)
	}
	for side := range 2 {
		writeMBs[side] = float64(size) / 1e6 / spent[side].Seconds()
	}
	spent = [2]time.Duration{}
	phase((*os.File).ReadAt)
	for side := range 2 {
		readMBs[side] = float64(size) / 1e6 / spent[side].Seconds()
	}
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
// device over an unencrypted file, both on the same file system. Each
// iteration is one interleaved pass over both (see interleavedPass) and
// gives one pair of ratios; the reported figures are the medians over the
// iterations, so a burst of load from elsewhere on a shared machine moves
// one pair, not the result. Run it with several iterations:
//
//	go test -run '^$' -bench SequentialDirectIO -benchtime 7x ./cryptvol
//
// Ratios (engine / baseline) are the result to read. Figures for issue 13
// (2 shared vCPUs, AMD EPYC with VAES, load average 0.3-2.3 from other
// jobs; seven runs of -benchtime 5x each alternating old and new code,
// median of the runs' medians):
//
//	                 read-ratio  write-ratio  engine read  engine write
//	before (f85bcaf)       0.37         0.25     503 MB/s      596 MB/s
//	after                  0.74         0.66    1040 MB/s     1405 MB/s
//
// with the baseline at about 1370 MB/s read and 2300 MB/s write. A FUSE
// file that copies instead of encrypting reached about 0.75 read and 0.70
// write on the same machine: most of what is left is FUSE itself (the
// kernel copying each request to and from the server and waking its
// threads), not AES. BenchmarkSectorCipher went from 1.8 to 9.2 GB/s.
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
	var bw, br, cw, cr, rw, rr []float64
	b.SetBytes(2 * size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, r := interleavedPass(b, [2]string{base, v.MountDir()}, size)
		pw, pr, uw, ur := w[0], r[0], w[1], r[1]
		bw, br, cw, cr = append(bw, pw), append(br, pr), append(cw, uw), append(cr, ur)
		rw, rr = append(rw, uw/pw), append(rr, ur/pr)
	}
	b.StopTimer()
	b.ReportMetric(median(bw), "plain-write-MB/s")
	b.ReportMetric(median(br), "plain-read-MB/s")
	b.ReportMetric(median(cw), "userspace-write-MB/s")
	b.ReportMetric(median(cr), "userspace-read-MB/s")
	b.ReportMetric(median(rw), "write-ratio")
	b.ReportMetric(median(rr), "read-ratio")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
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
