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
// sector to 1 MiB, so the engine serves many requests in parallel (the
// race detector watches them). Every region must read back as written,
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

// TestUnalignedServerBuffers drives the file's Read and Write directly
// with request buffers at several alignments over an O_DIRECT backing
// file: the backing I/O goes through the engine's own aligned buffer, the
// caller's data is left as it was, and the result on disk is the same.
func TestUnalignedServerBuffers(t *testing.T) {
	const size = 64 << 10
	path := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	backing, direct, err := openBacking(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	if !direct {
		t.Skip("the temporary directory's file system refuses O_DIRECT")
	}
	key := randBytes(t, 64)
	sc, err := NewSectorCipher(key, 4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := &dataFile{cipher: sc, backing: backing, size: size, sectorSize: 4096, direct: true}
	f.pool.New = func() any {
		b := alignedBuf(maxIO + 4096)
		return &b
	}
	ctx := context.Background()
	for _, misalign := range []int{0, 1, 16} {
		pt := randBytes(t, 3*4096)
		in := make([]byte, len(pt)+4096+misalign)
		in = in[4096-int(uintptr(unsafePointer(in))&4095)+misalign:][:len(pt)]
		copy(in, pt)
		if n, errno := f.Write(ctx, nil, in, 4096); errno != 0 || n != uint32(len(pt)) {
			t.Fatalf("misalign %d: write %d, %v", misalign, n, errno)
		}
		if !bytes.Equal(in, pt) {
			t.Fatalf("misalign %d: the caller's buffer was modified", misalign)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := xts.NewCipher(aes.NewCipher, key)
		for i := 0; i < 3; i++ {
			sec := raw[4096*(i+1) : 4096*(i+2)]
			ref.Decrypt(sec, sec, uint64(8*(i+1)))
			if !bytes.Equal(sec, pt[4096*i:4096*(i+1)]) {
				t.Fatalf("misalign %d: sector %d on disk does not decrypt to what was written", misalign, i+1)
			}
		}
		dest := make([]byte, len(pt)+4096+misalign)
		dest = dest[4096-int(uintptr(unsafePointer(dest))&4095)+misalign:][:len(pt)]
		res, errno := f.Read(ctx, nil, dest, 4096)
		if errno != 0 {
			t.Fatalf("misalign %d: read: %v", misalign, errno)
		}
		got, _ := res.Bytes(nil)
		if !bytes.Equal(got, pt) {
			t.Fatalf("misalign %d: read back differs", misalign)
		}
	}
}
