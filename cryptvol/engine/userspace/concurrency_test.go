package userspace

import (
	"bytes"
	"context"
	"crypto/aes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/crypto/xts"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
)

// TestConcurrentIO has many goroutines write and read back their own
// regions of the device at once, with direct I/O and sizes from one
// sector to 1 MiB, so the engine serves requests in parallel and splits
// the large ones across CPUs. Every region must read back as written,
// a flush of the device must have reached the backing file's fsync by the
// time it returns, and the backing file must then hold exactly the
// expected image encrypted as dm-crypt would (checked with x/crypto/xts).
func TestConcurrentIO(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE, loop devices)")
	}
	for _, tc := range []struct {
		name       string
		sectorSize int
		buffered   bool
	}{{"4096 direct loop", 4096, false}, {"512 buffered loop", 512, true}} {
		t.Run(tc.name, func(t *testing.T) {
			const workers, region, segOff = 8, 2 << 20, 8192
			ctx := context.Background()
			dir := t.TempDir()
			backing := filepath.Join(dir, "backing")
			if err := os.WriteFile(backing, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(backing, segOff+workers*region); err != nil {
				t.Fatal(err)
			}
			key := randBytes(t, 64)
			e := New(Options{RuntimeDir: filepath.Join(dir, "run"), BufferedLoop: tc.buffered})
			dev, err := e.Attach(ctx, engine.Target{Name: "t", Backing: backing, Offset: segOff, Size: workers * region,
				Cipher: "aes-xts-plain64", Key: key, SectorSize: tc.sectorSize})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := dev.Detach(ctx); err != nil {
					t.Error(err)
				}
			})
			f, err := os.OpenFile(dev.Path(), os.O_RDWR|unix.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()

			// Sectors never written read as whatever zeros decrypt to.
			image := make([]byte, workers*region)
			if _, err := f.ReadAt(image, 0); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					base := int64(w * region)
					want := image[base : base+region]
					buf := alignedBuf(1 << 20)
					for i := range 40 {
						n := []int{4096, 8192, 65536, 1 << 20, 12288}[i%5]
						off := int64(rng.IntN((region-n)/4096+1) * 4096)
						for j := range buf[:n] {
							buf[j] = byte(rng.Uint32())
						}
						if _, err := f.WriteAt(buf[:n], base+off); err != nil {
							t.Errorf("worker %d: write %d at %d: %v", w, n, off, err)
							return
						}
						copy(want[off:], buf[:n])
						clear(buf[:n])
						if _, err := f.ReadAt(buf[:n], base+off); err != nil {
							t.Errorf("worker %d: read %d at %d: %v", w, n, off, err)
							return
						}
						if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
							t.Errorf("worker %d: %d bytes at %d read back differently", w, n, off)
							return
						}
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			got := alignedBuf(len(image))
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, image) {
				t.Fatal("device content differs from what the workers wrote")
			}

			file := dev.(*device).file
			before := file.syncs.Load()
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if file.syncs.Load() == before {
				t.Fatal("fsync of the device returned without syncing the backing file")
			}
			raw, err := os.ReadFile(backing)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := xts.NewCipher(aes.NewCipher, key)
			if err != nil {
				t.Fatal(err)
			}
			ct := raw[segOff:]
			for off := 0; off < len(ct); off += tc.sectorSize {
				ref.Decrypt(ct[off:off+tc.sectorSize], ct[off:off+tc.sectorSize], uint64(off/512))
			}
			if !bytes.Equal(ct, image) {
				t.Fatal("backing file does not hold the written image under dm-crypt's aes-xts-plain64")
			}
		})
	}
}
